//! XXH64 (xxHash, 64-bit): the stable content hash behind line hashes and model
//! fingerprints. Written out here because the value is stored in score files and must not
//! change with the Rust toolchain (std's `DefaultHasher` may), and a multi-gigabyte model
//! is hashed at memory speed. Test vectors are those of the reference implementation.

use std::io::Read;

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn merge(acc: u64, val: u64) -> u64 {
    (acc ^ round(0, val)).wrapping_mul(P1).wrapping_add(P4)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

fn u32_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[i..i + 4]);
    u64::from(u32::from_le_bytes(w))
}

/// Streaming XXH64: feed bytes in any pieces, the digest is that of their concatenation.
#[derive(Debug, Clone)]
pub struct Xxh64 {
    seed: u64,
    v: [u64; 4],
    buf: [u8; 32],
    buffered: usize,
    total: u64,
}

impl Xxh64 {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            v: [
                seed.wrapping_add(P1).wrapping_add(P2),
                seed.wrapping_add(P2),
                seed,
                seed.wrapping_sub(P1),
            ],
            buf: [0; 32],
            buffered: 0,
            total: 0,
        }
    }

    fn stripe(&mut self, s: &[u8]) {
        for (k, v) in self.v.iter_mut().enumerate() {
            *v = round(*v, u64_at(s, 8 * k));
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.buffered > 0 {
            let take = (32 - self.buffered).min(data.len());
            self.buf[self.buffered..self.buffered + take].copy_from_slice(&data[..take]);
            self.buffered += take;
            data = &data[take..];
            if self.buffered < 32 {
                return;
            }
            let b = self.buf;
            self.stripe(&b);
            self.buffered = 0;
        }
        let mut chunks = data.chunks_exact(32);
        for c in chunks.by_ref() {
            self.stripe(c);
        }
        let rest = chunks.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    pub fn digest(&self) -> u64 {
        let [v1, v2, v3, v4] = self.v;
        let mut h = if self.total >= 32 {
            let h = v1
                .rotate_left(1)
                .wrapping_add(v2.rotate_left(7))
                .wrapping_add(v3.rotate_left(12))
                .wrapping_add(v4.rotate_left(18));
            [v1, v2, v3, v4].into_iter().fold(h, merge)
        } else {
            self.seed.wrapping_add(P5)
        };
        h = h.wrapping_add(self.total);
        let tail = &self.buf[..self.buffered];
        let mut i = 0;
        while i + 8 <= tail.len() {
            h = (h ^ round(0, u64_at(tail, i)))
                .rotate_left(27)
                .wrapping_mul(P1)
                .wrapping_add(P4);
            i += 8;
        }
        if i + 4 <= tail.len() {
            h = (h ^ u32_at(tail, i).wrapping_mul(P1))
                .rotate_left(23)
                .wrapping_mul(P2)
                .wrapping_add(P3);
            i += 4;
        }
        for &b in &tail[i..] {
            h = (h ^ u64::from(b).wrapping_mul(P5))
                .rotate_left(11)
                .wrapping_mul(P1);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^ (h >> 32)
    }
}

/// XXH64 with seed 0 of `data`.
pub fn xxh64(data: &[u8]) -> u64 {
    let mut h = Xxh64::new(0);
    h.update(data);
    h.digest()
}

/// The form hashes take in records: 16 lowercase hex digits.
pub fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// XXH64 of everything `r` yields.
pub fn xxh64_reader(mut r: impl Read) -> std::io::Result<u64> {
    let mut h = Xxh64::new(0);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(h.digest());
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digests of the reference implementation (python-xxhash 3.x, `xxh64(data, seed)`).
    #[test]
    fn reference_vectors() {
        let long: Vec<u8> = (0..=255u8).cycle().take(256 * 5).chain(*b"xyz").collect();
        let cases: [(&[u8], u64, u64); 5] = [
            (b"", 0xef46db3751d8e999, 0xd5afba1336a3be4b),
            (b"a", 0xd24ec4f1a98c6e5b, 0xdec2bc81c3cd46c6),
            (b"abc", 0x44bc2cf5ad770999, 0xbea9ca8199328908),
            (
                b"0123456789abcdef0123456789abcdef",
                0x642a94958e71e6c5,
                0x048b8b580878a4a4,
            ),
            (&long, 0xafd18a3957d3670a, 0x0a72eb278443eb59),
        ];
        for (data, seed0, seed1) in cases {
            assert_eq!(xxh64(data), seed0, "{} bytes", data.len());
            let mut h = Xxh64::new(1);
            h.update(data);
            assert_eq!(h.digest(), seed1, "{} bytes, seed 1", data.len());
        }
    }

    #[test]
    fn pieces_hash_like_the_whole() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        for cut in [0, 1, 5, 31, 32, 33, 64, 999] {
            let mut h = Xxh64::new(0);
            h.update(&data[..cut]);
            h.update(&data[cut..]);
            assert_eq!(h.digest(), xxh64(&data), "cut at {cut}");
        }
        assert_eq!(xxh64_reader(&data[..]).unwrap(), xxh64(&data));
        assert_eq!(hex(0xab), "00000000000000ab");
    }
}
