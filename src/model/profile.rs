//! Instrumentation of the forward pass for `gateau bench`: device memory in use is sampled
//! after every wrapped op (its maximum is the phase's peak), and with `--profile` every op
//! is bracketed by device synchronizations and its wall time added to a table (CUDA work is
//! asynchronous, so this is the op's device time plus launch gaps). Off, an op costs one
//! atomic load.

use candle_core::Device;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static TIMING: AtomicBool = AtomicBool::new(false);
static PEAK: AtomicU64 = AtomicU64::new(0);
static TABLE: Mutex<BTreeMap<&'static str, (f64, u64)>> = Mutex::new(BTreeMap::new());

/// Per-op totals of one profiled run.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// (op, seconds, calls), slowest first.
    pub ops: Vec<(String, f64, u64)>,
    /// Most device memory in use after any op, in bytes (None on the CPU).
    pub peak_bytes: Option<u64>,
}

/// Starts sampling memory after every op; with `timing`, also times every op (which
/// synchronizes the device around it, so timed runs should not use it).
pub fn start(timing: bool) {
    TABLE.lock().map(|mut t| t.clear()).ok();
    PEAK.store(0, Ordering::Relaxed);
    TIMING.store(timing, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
}

pub fn stop() -> Profile {
    ON.store(false, Ordering::Relaxed);
    let mut ops: Vec<(String, f64, u64)> = TABLE
        .lock()
        .map(|t| t.iter().map(|(k, v)| (k.to_string(), v.0, v.1)).collect())
        .unwrap_or_default();
    ops.sort_by(|a, b| b.1.total_cmp(&a.1));
    let peak = PEAK.load(Ordering::Relaxed);
    Profile {
        ops,
        peak_bytes: (peak > 0).then_some(peak),
    }
}

/// Device memory in use (all of the device, as the driver reports it), in bytes.
#[cfg(feature = "cuda")]
pub fn mem_used(device: &Device) -> Option<u64> {
    if !device.is_cuda() {
        return None;
    }
    candle_core::cuda::cudarc::driver::result::mem_get_info()
        .ok()
        .map(|(free, total)| (total - free) as u64)
}

#[cfg(not(feature = "cuda"))]
pub fn mem_used(_: &Device) -> Option<u64> {
    None
}

/// Runs `f` as op `name`.
pub fn op<T>(
    device: &Device,
    name: &'static str,
    f: impl FnOnce() -> candle_core::Result<T>,
) -> candle_core::Result<T> {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    if !TIMING.load(Ordering::Relaxed) {
        let r = f()?;
        // Allocation is stream-ordered: the memory of queued work is reserved already.
        if let Some(m) = mem_used(device) {
            PEAK.fetch_max(m, Ordering::Relaxed);
        }
        return Ok(r);
    }
    device.synchronize()?;
    let t0 = Instant::now();
    let r = f()?;
    device.synchronize()?;
    let dt = t0.elapsed().as_secs_f64();
    if let Ok(mut t) = TABLE.lock() {
        let e = t.entry(name).or_insert((0.0, 0));
        e.0 += dt;
        e.1 += 1;
    }
    if let Some(m) = mem_used(device) {
        PEAK.fetch_max(m, Ordering::Relaxed);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_counted_only_while_on() {
        let d = Device::Cpu;
        op(&d, "before", || Ok(())).unwrap();
        start(true);
        op(&d, "x", || Ok(())).unwrap();
        op(&d, "x", || Ok(())).unwrap();
        let p = stop();
        op(&d, "after", || Ok(())).unwrap();
        // Other tests may run forward passes meanwhile; only this test's names matter.
        let calls = |n: &str| p.ops.iter().find(|o| o.0 == n).map(|o| o.2);
        assert_eq!(calls("x"), Some(2));
        assert_eq!((calls("before"), calls("after")), (None, None));
    }
}
