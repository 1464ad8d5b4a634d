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
static TABLE: Mutex<BTreeMap<String, (f64, u64)>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// The timed op this thread is inside, if any: an op within it is tabled as
    /// `outer/inner`, so its time is not counted twice in a phase's total.
    static OUTER: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Per-op totals of one profiled run.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// (op, seconds, calls), slowest first; an op timed inside another is named
    /// `outer/inner` and its time is part of the outer one's.
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
        .map(|t| t.iter().map(|(k, v)| (k.clone(), v.0, v.1)).collect())
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
    let outer = OUTER.with(|o| o.replace(Some(name)));
    let t0 = Instant::now();
    let r = f();
    OUTER.with(|o| o.set(outer));
    let r = r?;
    device.synchronize()?;
    let dt = t0.elapsed().as_secs_f64();
    let key = match outer {
        Some(o) => format!("{o}/{name}"),
        None => name.to_string(),
    };
    if let Ok(mut t) = TABLE.lock() {
        let e = t.entry(key).or_insert((0.0, 0));
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

    /// The table is global: these tests must not start/stop it under each other.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn ops_are_counted_only_while_on() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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

    #[test]
    fn nested_ops_are_named_under_their_outer_op() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let d = Device::Cpu;
        start(true);
        op(&d, "outer_t", || op(&d, "inner_t", || Ok(()))).unwrap();
        op(&d, "inner_t", || Ok(())).unwrap();
        let p = stop();
        let calls = |n: &str| p.ops.iter().find(|o| o.0 == n).map(|o| o.2);
        assert_eq!(calls("outer_t"), Some(1));
        assert_eq!(calls("outer_t/inner_t"), Some(1));
        assert_eq!(calls("inner_t"), Some(1));
    }
}
