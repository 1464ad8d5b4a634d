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
    /// This thread started the timed profile: only its ops are timed, so other threads'
    /// work (tests running side by side) neither lands in the table nor waits on syncs.
    static TIMED_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
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
    TIMED_HERE.with(|t| t.set(timing));
    ON.store(true, Ordering::Relaxed);
}

pub fn stop() -> Profile {
    ON.store(false, Ordering::Relaxed);
    TIMED_HERE.with(|t| t.set(false));
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

/// The profile row of a run's wall time outside every timed op: host work the device waited
/// for (tables, plans, copies to the host) and ops that are not wrapped. A 64k-token pass
/// once spent 5% of its time there, computing RoPE tables on one core.
pub const OUTSIDE: &str = "(outside timed ops)";

/// Runs `f` once with every op timed, and adds the row [`OUTSIDE`].
pub fn profiled<E: From<candle_core::Error>>(
    device: &Device,
    f: impl FnOnce() -> Result<(), E>,
) -> Result<Profile, E> {
    device.synchronize()?;
    start(true);
    let t0 = Instant::now();
    let r = f().and_then(|()| Ok(device.synchronize()?));
    let wall = t0.elapsed().as_secs_f64();
    let mut p = stop();
    r?;
    // Nested ops (`outer/inner`) are part of their outer op's time.
    let inside: f64 = p
        .ops
        .iter()
        .filter(|o| !o.0.contains('/'))
        .map(|o| o.1)
        .sum();
    p.ops.push((OUTSIDE.into(), (wall - inside).max(0.0), 1));
    p.ops.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(p)
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
    if !TIMING.load(Ordering::Relaxed) || !TIMED_HERE.with(|t| t.get()) {
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
        std::thread::spawn(|| op(&Device::Cpu, "other_thread", || Ok(())).unwrap())
            .join()
            .unwrap();
        let p = stop();
        op(&d, "after", || Ok(())).unwrap();
        let calls = |n: &str| p.ops.iter().find(|o| o.0 == n).map(|o| o.2);
        assert_eq!(calls("x"), Some(2));
        assert_eq!((calls("before"), calls("after")), (None, None));
        assert_eq!(
            calls("other_thread"),
            None,
            "only the profiling thread is timed"
        );
    }

    /// Work outside every op shows as its own row: 30 ms of it around a 10 ms op.
    #[test]
    fn time_outside_the_ops_has_its_own_row() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let d = Device::Cpu;
        let nap = |ms| std::thread::sleep(std::time::Duration::from_millis(ms));
        let p = profiled::<candle_core::Error>(&d, || {
            nap(30);
            op(&d, "napping_op", || {
                nap(10);
                Ok(())
            })
        })
        .unwrap();
        let secs = |n: &str| p.ops.iter().find(|o| o.0 == n).map(|o| o.1).unwrap();
        assert!(secs("napping_op") >= 0.010);
        assert!(secs(OUTSIDE) >= 0.030, "{:?}", p.ops);
        assert!(secs(OUTSIDE) < 0.030 + secs("napping_op"), "{:?}", p.ops);
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
