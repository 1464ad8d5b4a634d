//! Instrumentation of the forward pass for `gateau bench`: device memory in use is sampled
//! after every wrapped op (its maximum is the phase's peak), and with `--profile` every op
//! is bracketed by device synchronizations and its wall time added to a table (CUDA work is
//! asynchronous, so this is the op's device time plus launch gaps). The state is the
//! calling thread's own: the bench runs its passes on one thread, and other threads (tests
//! side by side) neither land in its table nor wait on its syncs. Off, an op costs one
//! thread-local read.

use candle_core::Device;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Instant;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static TIMING: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<u64> = const { Cell::new(0) };
    static TABLE: RefCell<BTreeMap<String, (f64, u64)>> = const { RefCell::new(BTreeMap::new()) };
    /// The timed op this thread is inside, if any: an op within it is tabled as
    /// `outer/inner`, so its time is not counted twice in a phase's total.
    static OUTER: Cell<Option<&'static str>> = const { Cell::new(None) };
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
    TABLE.with(|t| t.borrow_mut().clear());
    PEAK.with(|p| p.set(0));
    TIMING.with(|t| t.set(timing));
    ON.with(|o| o.set(true));
}

pub fn stop() -> Profile {
    ON.with(|o| o.set(false));
    TIMING.with(|t| t.set(false));
    let mut ops: Vec<(String, f64, u64)> = TABLE.with(|t| {
        t.borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.0, v.1))
            .collect()
    });
    ops.sort_by(|a, b| b.1.total_cmp(&a.1));
    let peak = PEAK.with(|p| p.get());
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
    if !ON.with(|o| o.get()) {
        return f();
    }
    let peak = |m: u64| PEAK.with(|p| p.set(p.get().max(m)));
    if !TIMING.with(|t| t.get()) {
        let r = f()?;
        // Allocation is stream-ordered: the memory of queued work is reserved already.
        if let Some(m) = mem_used(device) {
            peak(m);
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
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        let e = t.entry(key).or_insert((0.0, 0));
        e.0 += dt;
        e.1 += 1;
    });
    if let Some(m) = mem_used(device) {
        peak(m);
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

    /// Work outside every op shows as its own row: 30 ms of it around a 10 ms op, while
    /// another thread profiles its own run (which once cleared and filled the same table).
    #[test]
    fn time_outside_the_ops_has_its_own_row() {
        let d = Device::Cpu;
        let nap = |ms| std::thread::sleep(std::time::Duration::from_millis(ms));
        let other = std::thread::spawn(move || {
            profiled::<candle_core::Error>(&Device::Cpu, || {
                for _ in 0..40 {
                    op(&Device::Cpu, "elsewhere", || {
                        nap(1);
                        Ok(())
                    })?;
                }
                Ok(())
            })
            .unwrap()
        });
        let p = profiled::<candle_core::Error>(&d, || {
            nap(30);
            op(&d, "napping_op", || {
                nap(10);
                Ok(())
            })
        })
        .unwrap();
        let theirs = other.join().unwrap();
        assert!(p.ops.iter().all(|o| o.0 != "elsewhere"), "{:?}", p.ops);
        assert!(
            theirs.ops.iter().all(|o| o.0 != "napping_op"),
            "{:?}",
            theirs.ops
        );
        let secs = |n: &str| p.ops.iter().find(|o| o.0 == n).map(|o| o.1).unwrap();
        assert!(secs("napping_op") >= 0.010);
        assert!(secs(OUTSIDE) >= 0.030, "{:?}", p.ops);
        assert!(secs(OUTSIDE) < 0.030 + secs("napping_op"), "{:?}", p.ops);
    }

    #[test]
    fn nested_ops_are_named_under_their_outer_op() {
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
