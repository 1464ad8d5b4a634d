//! The per-sample score record (spec section 7), one JSON line per sample.

pub mod provenance;
pub mod verify;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Scored.
    Ok,
    /// Not a usable sample (malformed line, missing field, empty response, duplicate id).
    Bad,
    /// Well-formed but not scored (too long).
    Skipped,
}

/// `null` must stay distinct from an absent field: `cas: null` means "fewer than two
/// segments", while a bad record has no `cas` at all.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRecord {
    pub id: Value,
    pub line: u64,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Scored, but something the user should know (no context, too few segments).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_ctx: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_resp: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppl_short: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppl_long: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seg_ppl: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seg_attn: Option<Vec<f64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub cas: Option<Option<f64>>,
    /// With `score --with-ifd`: PPL_B of the response after BOS only (IFD's denominator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppl_alone: Option<f64>,
    /// Where each segment starts in the (truncated) context, in tokens: with `seg_len`,
    /// this places every segment relative to what model A reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seg_start: Option<Vec<usize>>,
    /// The segment length L.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seg_len: Option<usize>,
    /// Self-homologous mode: how many tokens at the end of the context model A reads
    /// (absent when model A is a separate checkpoint, which reads all of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx_short: Option<usize>,
    /// With `score --token-nll`: model A's per-token response NLL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll_short: Option<Vec<f32>>,
    /// With `score --token-nll`: model B's per-token response NLL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll_long: Option<Vec<f32>>,
    /// The settings behind the numbers (`provenance::Fingerprint`); absent in records of
    /// a gateau before fingerprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// XXH64 of the input line scored (`provenance::line_hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_hash: Option<String>,
    /// `I/N` when scored with `--shard I/N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

impl ScoreRecord {
    /// A record without numbers: a bad or skipped sample.
    pub fn failed(id: Value, line: u64, status: Status, error: String) -> Self {
        Self {
            id,
            line,
            status,
            error: Some(error),
            warnings: Vec::new(),
            source: None,
            n_tokens: None,
            n_ctx: None,
            n_resp: None,
            truncated: None,
            ppl_short: None,
            ppl_long: None,
            seg_ppl: None,
            seg_attn: None,
            cas: None,
            ppl_alone: None,
            seg_start: None,
            seg_len: None,
            ctx_short: None,
            nll_short: None,
            nll_long: None,
            fingerprint: None,
            line_hash: None,
            shard: None,
        }
    }

    /// The key ids are compared by: their JSON text (1 and "1" are different ids).
    pub fn id_key(&self) -> String {
        self.id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_cas_round_trips_and_differs_from_absent() {
        let mut r = ScoreRecord::failed(Value::from("x"), 3, Status::Ok, String::new());
        r.error = None;
        r.cas = Some(None);
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"cas\":null"), "{text}");
        let back: ScoreRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.cas, Some(None));
        let bad = ScoreRecord::failed(Value::from(1), 1, Status::Bad, "why".into());
        let back: ScoreRecord =
            serde_json::from_str(&serde_json::to_string(&bad).unwrap()).unwrap();
        assert_eq!(back.cas, None);
    }
}
