//! The E4M3 arithmetic against hand-worked codes and an independent decoder, and the CUDA
//! kernels against the CPU twin.

use super::*;
use candle_core::Device;

/// The value of an E4M3 code, from the format's definition (1 sign, 4 exponent bits with
/// bias 7, 3 mantissa bits; exponent 0 is subnormal, `m · 2^-9`; 0x7F/0xFF are NaN).
fn decode(bits: u8) -> f64 {
    let sign = if bits & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (((bits >> 3) & 0xF) as i32, (bits & 7) as f64);
    if bits & 0x7F == 0x7F {
        return f64::NAN;
    }
    sign * match e {
        0 => m * 2f64.powi(-9),
        _ => (1.0 + m / 8.0) * 2f64.powi(e - 7),
    }
}

fn codes(t: &Tensor) -> Vec<u8> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<F8E4M3>()
        .unwrap()
        .iter()
        .map(|c| c.to_bits())
        .collect()
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + seed) * 7919) % 211) as f32 / 100.0 - 1.05)
        .collect()
}

#[test]
fn e4m3_codes_are_the_hand_worked_ones() {
    let dev = Device::Cpu;
    // amax 448: the codes of the values themselves (448 / amax = 1).
    let x = [
        448.0f32,
        1.0,
        -1.0,
        1.0625,               // half-way 1.0 | 1.125: to the even mantissa, 1.0
        1.1875,               // half-way 1.125 | 1.25: to the even one, 1.25
        240.0,                // 1.875 · 2^7
        2f32.powi(-9),        // the smallest subnormal
        2f32.powi(-10),       // half of it: to even, 0
        3.0 * 2f32.powi(-10), // 1.5 subnormal steps: to even, 2
        0.0,
    ];
    let want = [0x7E, 0x38, 0xB8, 0x38, 0x3A, 0x77, 0x01, 0x00, 0x02, 0x00];
    let (q, s) = quantize(&Tensor::new(&x, &dev).unwrap()).unwrap();
    assert_eq!(codes(&q), want);
    assert!((s.to_vec1::<f32>().unwrap()[0] - 1.0).abs() < 1e-6);
    // amax 2: everything times 224; the scale is 2/448.
    let x = [2.0f32, -1.0, 0.25, 0.0];
    let (q, s) = quantize(&Tensor::new(&x, &dev).unwrap()).unwrap();
    // 448; -224 = -1.75 · 2^7; 56 = 1.75 · 2^5; 0.
    assert_eq!(codes(&q), [0x7E, 0xF6, 0x66, 0x00]);
    let s = s.to_vec1::<f32>().unwrap()[0];
    assert!((s - 2.0 / 448.0).abs() < 1e-9, "{s}");
    // bf16 input: the same codes.
    let xb = Tensor::new(&x, &dev)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    assert_eq!(codes(&quantize(&xb).unwrap().0), [0x7E, 0xF6, 0x66, 0x00]);
    // An all-zero tensor: codes 0 and scale 0, not NaN.
    let (q, s) = quantize(&Tensor::zeros(5, DType::F32, &dev).unwrap()).unwrap();
    assert_eq!(codes(&q), [0; 5]);
    assert_eq!(s.to_vec1::<f32>().unwrap(), [0.0]);
    // Rows are scaled one by one: amax 2, 448, 0 and 0.5 give the codes of x · 224, x · 1,
    // 0 and x · 896.
    let x = [
        [2.0f32, -1.0, 0.25, 0.0],
        [448.0, 1.0, -1.0, 240.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.5, 0.25, -0.125, 0.0],
    ];
    let (q, s) = quantize(&Tensor::new(&x, &dev).unwrap()).unwrap();
    assert_eq!(q.dims(), [4, 4]);
    #[rustfmt::skip]
    let want = [
        0x7E, 0xF6, 0x66, 0x00,
        0x7E, 0x38, 0xB8, 0x77,
        0x00, 0x00, 0x00, 0x00,
        0x7E, 0x76, 0xEE, 0x00, // 448; 224 = 1.75 · 2^7; -112 = -1.75 · 2^6
    ];
    assert_eq!(codes(&q), want);
    let s = s.to_vec1::<f32>().unwrap();
    let want = [2.0 / 448.0, 1.0, 0.0, 0.5 / 448.0];
    assert!(
        s.iter().zip(want).all(|(a, b)| (a - b).abs() <= 1e-6 * b),
        "{s:?}"
    );
}

/// Every value comes back within half an E4M3 step of its binade (3 mantissa bits), or of
/// the subnormal step `2^-9` times the scale.
#[test]
fn dequantized_values_are_within_half_a_step() {
    let dev = Device::Cpu;
    let mut x = values(4000, 3);
    x[17] = 37.5; // a large amax so that small values reach the subnormals
    let (q, s) = quantize(&Tensor::new(x.as_slice(), &dev).unwrap()).unwrap();
    let s = s.to_vec1::<f32>().unwrap()[0] as f64;
    for (&v, c) in x.iter().zip(codes(&q)) {
        let y = v as f64 / s;
        let step = match y.abs() >= 2f64.powi(-6) {
            true => 2f64.powi(y.abs().log2().floor() as i32 - 3),
            false => 2f64.powi(-9),
        };
        let back = decode(c);
        assert!(
            (back - y).abs() <= step / 2.0 + 1e-12,
            "{v}: code {c:#x} = {back}, want {y}"
        );
    }
}

/// The GEMM is `s_h[i] s_w[j] Σ q_h q_w` of the codes, decoded here independently; with a
/// residual and with a bias.
#[test]
fn fp8_gemm_is_the_scaled_product_of_the_codes() {
    let dev = Device::Cpu;
    let (m, k, d) = (6, 48, 32);
    let h = Tensor::from_vec(values(m * k, 2), (2, 3, k), &dev).unwrap();
    let w = Tensor::from_vec(values(d * k, 5), (d, k), &dev).unwrap();
    let bias = Tensor::from_vec(values(d, 9), d, &dev).unwrap();
    let lin = Fp8Linear::quantize(&Linear::new(w.clone(), None)).unwrap();
    let (hq, hs) = quantize(&h).unwrap();
    let (hq, wq) = (codes(&hq), codes(lin.codes()));
    let (hs, ws) = (hs.to_vec1::<f32>().unwrap(), lin.scales().unwrap());
    assert_eq!((hs.len(), ws.len()), (m, d));
    // The scales are each row's own max |x| / 448.
    let hv = h.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (r, s) in hs.iter().enumerate() {
        let amax = hv[r * k..(r + 1) * k]
            .iter()
            .fold(0f32, |a, v| a.max(v.abs()));
        assert!((s - amax / 448.0).abs() <= 1e-9, "row {r}: {s} vs {amax}");
    }
    let want: Vec<f64> = (0..m * d)
        .map(|i| {
            let (r, j) = (i / d, i % d);
            let dot: f64 = (0..k)
                .map(|t| decode(hq[r * k + t]) * decode(wq[j * k + t]))
                .sum();
            hs[r] as f64 * ws[j] as f64 * dot
        })
        .collect();
    let got = linear_f32(&h, &lin).unwrap();
    assert_eq!(got.dims(), [2, 3, d]);
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (*g as f64 - w).abs() <= 1e-6 * w.abs().max(1e-3),
            "{g} vs {w}"
        );
    }
    // Into a residual stream that is not zero.
    let x0 = values(m * d, 7);
    let x = Tensor::from_vec(x0.clone(), (2, 3, d), &dev).unwrap();
    linear_add_into(&x, &h, &lin).unwrap();
    let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for i in 0..m * d {
        let w = x0[i] as f64 + want[i];
        assert!((x[i] as f64 - w).abs() <= 1e-6 * w.abs().max(1e-2), "{i}");
    }
    // A bias is added in f32 after the product.
    let with_bias = Fp8Linear::quantize(&Linear::new(w.clone(), Some(bias.clone()))).unwrap();
    let b = bias.to_vec1::<f32>().unwrap();
    let got = linear_f32(&h, &with_bias).unwrap().flatten_all().unwrap();
    for (i, g) in got.to_vec1::<f32>().unwrap().iter().enumerate() {
        let w = want[i] + b[i % d] as f64;
        assert!((*g as f64 - w).abs() <= 1e-5 * w.abs().max(1e-2), "{i}");
    }
    // The unfused path: the same product in the input's dtype.
    let p = Proj::Fp8(lin).forward(&h).unwrap();
    assert_eq!(p.dtype(), DType::F32);
    let p = p.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(p
        .iter()
        .zip(&want)
        .all(|(a, b)| (*a as f64 - b).abs() <= 1e-6 * b.abs().max(1e-3)));
}

/// FP8 is an approximation of the dense product: within a few percent of its magnitude on
/// these values (3 mantissa bits: each operand within 1/16 relative).
#[test]
fn fp8_is_near_the_dense_product() {
    let dev = Device::Cpu;
    let (m, k, d) = (8, 256, 64);
    let h = Tensor::from_vec(values(m * k, 1), (m, k), &dev).unwrap();
    let w = Tensor::from_vec(values(d * k, 4), (d, k), &dev).unwrap();
    let dense = h.matmul(&w.t().unwrap()).unwrap();
    let lin = Fp8Linear::quantize(&Linear::new(w.clone(), None)).unwrap();
    let fp8 = linear_f32(&h, &lin).unwrap();
    let mag = h
        .abs()
        .unwrap()
        .matmul(&w.abs().unwrap().t().unwrap())
        .unwrap();
    let err = ((fp8 - &dense).unwrap().abs().unwrap() / mag).unwrap();
    let worst = err
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(worst < 0.0625 * 2.0, "{worst}");
    assert!(worst > 0.0, "FP8 cannot be exact on these values");
}

/// A row's product depends on its own values only: a token with a massive activation (an
/// attention sink) in the same call changes no other row's numbers, and neither does a
/// weight channel many times larger than the others.
#[test]
fn a_large_row_leaves_the_other_rows_alone() {
    let dev = Device::Cpu;
    let (m, k, d) = (5, 64, 32);
    let mut hv = values(m * k, 6);
    let w = Tensor::from_vec(values(d * k, 8), (d, k), &dev).unwrap();
    let lin = Fp8Linear::quantize(&Linear::new(w.clone(), None)).unwrap();
    let out = |hv: &[f32], lin: &Fp8Linear| {
        let h = Tensor::from_vec(hv.to_vec(), (m, k), &dev).unwrap();
        let y = linear_f32(&h, lin).unwrap();
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let before = out(&hv, &lin);
    for v in &mut hv[2 * k..3 * k] {
        *v *= 3000.0;
    }
    let after = out(&hv, &lin);
    for r in (0..m).filter(|&r| r != 2) {
        assert_eq!(
            before[r * d..(r + 1) * d],
            after[r * d..(r + 1) * d],
            "row {r}"
        );
    }
    let mut wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for v in &mut wv[7 * k..8 * k] {
        *v *= 3000.0;
    }
    let wide = Tensor::from_vec(wv, (d, k), &dev).unwrap();
    let wide = Fp8Linear::quantize(&Linear::new(wide, None)).unwrap();
    let again = out(&hv, &wide);
    for (i, (a, b)) in after.iter().zip(&again).enumerate() {
        if i % d != 7 {
            assert_eq!(a, b, "[{i}]");
        }
    }
}

#[test]
fn mismatched_operands_are_errors() {
    let dev = Device::Cpu;
    let w = Tensor::zeros((16, 32), DType::F32, &dev).unwrap();
    let lin = Fp8Linear::quantize(&Linear::new(w, None)).unwrap();
    let h = Tensor::zeros((4, 31), DType::F32, &dev).unwrap();
    assert!(linear_f32(&h, &lin).is_err());
    let x = Tensor::zeros((4, 15), DType::F32, &dev).unwrap();
    let h = Tensor::zeros((4, 32), DType::F32, &dev).unwrap();
    assert!(linear_add_into(&x, &h, &lin).is_err());
}

/// The CUDA kernels and cuBLASLt against the CPU twin: byte-identical codes (the same f32
/// arithmetic and conversion), and GEMMs within the f32-sum bound, on row counts that are
/// not multiples of 16.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU of compute capability 8.9 or later"]
fn cuda_fp8_equals_the_cpu_twin() {
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    let cpu = Device::Cpu;
    for (m, k, d) in [
        (1037, 4096, 576),
        (300, 1536, 4096),
        (5, 64, 32),
        (16, 11008, 4096),
    ] {
        let h = Tensor::from_vec(values(m * k, 2), (m, k), &cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let w = Tensor::from_vec(values(d * k, 3), (d, k), &cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let on = |t: &Tensor| t.to_device(&gpu).unwrap();
        let (qc, sc) = quantize(&h).unwrap();
        let (qg, sg) = quantize(&on(&h)).unwrap();
        assert_eq!(codes(&qg.to_device(&cpu).unwrap()), codes(&qc), "{m}x{k}");
        assert_eq!(sg.to_vec1::<f32>().unwrap(), sc.to_vec1::<f32>().unwrap());
        let lc = Fp8Linear::quantize(&Linear::new(w.clone(), None)).unwrap();
        let lg = Fp8Linear::quantize(&Linear::new(on(&w), None)).unwrap();
        assert_eq!(
            codes(&lg.codes().to_device(&cpu).unwrap()),
            codes(lc.codes())
        );
        assert_eq!(lg.scales().unwrap(), lc.scales().unwrap());
        let x = Tensor::from_vec(values(m * d, 1), (m, d), &cpu).unwrap();
        let xg = on(&x);
        linear_add_into(&x, &h, &lc).unwrap();
        linear_add_into(&xg, &on(&h), &lg).unwrap();
        let out = linear_f32(&on(&h), &lg).unwrap().to_device(&cpu).unwrap();
        let want_out = linear_f32(&h, &lc).unwrap();
        // Sum of |terms| from the 16-bit values; each quantized operand is within 1/16 of
        // its value, so the codes' terms are within (17/16)^2 < 1.13 of these.
        let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap().abs().unwrap();
        let mag = wide(&h).matmul(&wide(&w).t().unwrap()).unwrap();
        let mag = mag.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = xg
            .to_device(&cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got_out = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want_out = want_out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in 0..m * d {
            // Hopper's FP8 tensor cores keep fewer bits than f32 between cuBLASLt's
            // promotions of the partial sums (measured 6.6e-4 of sum |terms| at K = 4096):
            // 2^-9 of sum |terms|, plus one f32 rounding of the residual. A wrong layout or
            // scale is off by whole terms (1/64 of the sum at K = 64) or by factors.
            let tol = mag[i] * 1.13 / 512.0 + want[i].abs() * f32::EPSILON + 1e-6;
            assert!(
                (got[i] - want[i]).abs() <= tol,
                "{m}x{k}x{d} [{i}]: {} vs {}",
                got[i],
                want[i]
            );
            assert!((got_out[i] - want_out[i]).abs() <= tol, "out [{i}]");
        }
    }
}
