//! `gateau compare`: how much the selections of the different methods overlap at one ratio
//! (Jaccard |A n B| / |A u B| of the selected sets).

use crate::cli::settings::{CompareSettings, RankSettings};
use crate::rank::selection::Method;
use crate::report::analysis::analyse;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::process::ExitCode;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    /// Scored samples.
    pub n: usize,
    /// Samples each method selects.
    pub k: usize,
    pub methods: Vec<String>,
    /// Methods left out, with why.
    pub skipped: Vec<String>,
    /// `jaccard[i][j]` between methods i and j.
    pub jaccard: Vec<Vec<f64>>,
}

pub fn jaccard(a: &BTreeSet<u64>, b: &BTreeSet<u64>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

pub fn compare(s: &RankSettings) -> Result<Comparison> {
    let a = analyse(s)?;
    let mut methods = Vec::new();
    let mut sets = Vec::new();
    let mut skipped = Vec::new();
    for m in Method::ALL {
        if !a.supports(m) {
            skipped.push(format!(
                "{}: the scores have no ppl_alone (score with --with-ifd)",
                m.name()
            ));
            continue;
        }
        let ranked = a.rerank(s, m)?;
        sets.push(
            ranked[..a.k]
                .iter()
                .map(|r| r.line)
                .collect::<BTreeSet<u64>>(),
        );
        methods.push(m.name().to_string());
    }
    let jaccard = sets
        .iter()
        .map(|x| sets.iter().map(|y| jaccard(x, y)).collect())
        .collect();
    Ok(Comparison {
        n: a.ranked.len(),
        k: a.k,
        methods,
        skipped,
        jaccard,
    })
}

pub fn table(c: &Comparison) -> String {
    let mut out = format!(
        "Jaccard overlap of the top {} of {} scored samples\n{:>8}",
        c.k, c.n, ""
    );
    for m in &c.methods {
        out += &format!(" {m:>7}");
    }
    out += "\n";
    for (m, row) in c.methods.iter().zip(&c.jaccard) {
        out += &format!("{m:>8}");
        for v in row {
            out += &format!(" {v:>7.3}");
        }
        out += "\n";
    }
    for s in &c.skipped {
        out += &format!("left out: {s}\n");
    }
    out
}

pub fn run(cs: CompareSettings) -> Result<ExitCode> {
    let (s, json) = (&cs.rank, &cs.json);
    if !s.quiet {
        eprintln!("{}", cs.settings_line());
    }
    let c = compare(s)?;
    print!("{}", table(&c));
    if let Some(j) = &json {
        std::fs::write(j, serde_json::to_string_pretty(&c)? + "\n")
            .with_context(|| format!("cannot write --json {}", j.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaccard_by_hand() {
        let a: BTreeSet<u64> = [1, 2, 3].into();
        let b: BTreeSet<u64> = [2, 3, 4, 5].into();
        assert!((jaccard(&a, &b) - 2.0 / 5.0).abs() < 1e-12);
        assert_eq!(jaccard(&BTreeSet::new(), &BTreeSet::new()), 1.0);
    }
}
