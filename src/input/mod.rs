//! Data input: JSONL read line by line (never the whole file), each line kept as raw
//! bytes for byte-exact output, and parsed into a sample of the spec's four shapes.

pub mod template;

pub mod chat;
pub mod hints;
pub mod reader;
pub mod sample;
pub mod turns;

pub use reader::{LineReader, RawLine};
pub use sample::{parse_line, Sample, SampleError};
