//! Selection quality on labeled samples: AUROC (ties count half), precision of the top
//! fraction (ties broken by line order, as `select` breaks them), and the ROC and
//! precision curves behind the plots. Pure functions.

/// P(score of a random positive > score of a random negative), ties counting one half.
/// None when either class is empty.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut pos_rank_sum, mut n_pos) = (0.0, 0usize);
    let mut i = 0;
    // Mann-Whitney U from mean ranks (1-based) of tied groups.
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if positive[k] {
                pos_rank_sum += mean_rank;
                n_pos += 1;
            }
        }
        i = j + 1;
    }
    let n_neg = scores.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let u = pos_rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// Sample indices in selection order: highest score first, ties by line.
pub fn order(scores: &[f64], lines: &[u64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        scores[b]
            .total_cmp(&scores[a])
            .then(lines[a].cmp(&lines[b]))
    });
    idx
}

/// How many samples a ratio keeps: `select`'s own rule (spec section 8's exact ceiling).
pub fn keep(ratio: f64, n: usize) -> usize {
    crate::cli::settings::Keep::Ratio(ratio).count(n)
}

/// Share of positives among the top `ceil(ratio * n)`; None when that keeps nothing.
pub fn precision_at(order: &[usize], positive: &[bool], ratio: f64) -> Option<f64> {
    let k = keep(ratio, order.len());
    (k > 0).then(|| order[..k].iter().filter(|&&i| positive[i]).count() as f64 / k as f64)
}

/// ROC points (false positive rate, true positive rate) from the top down, one per
/// distinct score (tied samples enter together).
pub fn roc(scores: &[f64], positive: &[bool]) -> Vec<(f64, f64)> {
    let n_pos = positive.iter().filter(|&&p| p).count().max(1) as f64;
    let n_neg = positive.iter().filter(|&&p| !p).count().max(1) as f64;
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut out = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            if positive[k] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
        }
        out.push((fp / n_neg, tp / n_pos));
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_by_hand_with_ties() {
        // Positives 3, 2; negatives 1, 2: pairs (3>1) (3>2) (2>1) (2=2: half) -> 3.5 / 4.
        let s = [3.0, 2.0, 1.0, 2.0];
        let p = [true, true, false, false];
        assert!((auroc(&s, &p).unwrap() - 0.875).abs() < 1e-12);
        // All tied: 0.5. Perfect and reversed: 1 and 0.
        assert_eq!(auroc(&[1.0; 4], &p), Some(0.5));
        assert_eq!(auroc(&[4.0, 3.0, 2.0, 1.0], &p), Some(1.0));
        assert_eq!(auroc(&[1.0, 2.0, 3.0, 4.0], &p), Some(0.0));
        assert_eq!(auroc(&[1.0, 2.0], &[true, true]), None);
    }

    #[test]
    fn precision_breaks_ties_by_line() {
        // Scores tie at the cut: line order decides, as in `select`.
        let s = [1.0, 5.0, 5.0, 0.0];
        let lines = [0, 1, 2, 3];
        let o = order(&s, &lines);
        assert_eq!(o, vec![1, 2, 0, 3]);
        let p = [true, false, true, false];
        // ceil(0.3 * 4) = 2 -> lines 1, 2 -> one positive.
        assert_eq!(precision_at(&o, &p, 0.3), Some(0.5));
        // ceil(0.5 * 4 - 1e-9) = 2 exactly, not 3.
        assert_eq!(keep(0.5, 4), 2);
        assert_eq!(keep(0.3, 10), 3);
        assert_eq!(precision_at(&o, &p, 1.0), Some(0.5));
        assert_eq!(precision_at(&o, &p, 0.0), None);
    }

    #[test]
    fn roc_steps_through_tied_groups() {
        let s = [3.0, 2.0, 2.0, 1.0];
        let p = [true, true, false, false];
        assert_eq!(
            roc(&s, &p),
            vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]
        );
    }
}
