//! The byte mutator shared by the fuzz tests (`parser_fuzz` on the parsers, `wire_fuzz` through a
//! running gateway): a few random edits of a valid input, biased towards the bytes that decide HTTP
//! framing (CRLF, ':', SP, digits, `chunked`, whole framing headers).
//!
//! Seeds: a fixed one (reproducible) and one from the clock (new coverage every run), or the one
//! given in the test's environment variable, so a failure printed with its seed can be replayed.

use rand::rngs::StdRng;
use rand::Rng;

/// Byte strings that matter to framing, spliced in by the mutator.
pub const SPLICES: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\t",
    b",",
    b";",
    b"=",
    b"\"",
    b"0",
    b"5",
    b"9",
    b"f",
    b"+",
    b"-",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"\r\n\r\n",
    b"chunked",
    b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Host: x\r\n",
    b"Connection: close\r\n",
    b" HTTP/1.1\r\n",
];

/// The fixed seed and a clock seed, or only `$env_var`'s seed when it is set.
pub fn seeds(env_var: &str) -> Vec<u64> {
    if let Some(s) = std::env::var(env_var).ok().and_then(|s| s.parse().ok()) {
        return vec![s];
    }
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    vec![0x5EED_CAFE, clock]
}

/// One of `seeds`, mutated (or, one time in 20, pure noise).
pub fn mutate(rng: &mut StdRng, seeds: &[&[u8]]) -> Vec<u8> {
    let seed = seeds[rng.gen_range(0..seeds.len())];
    if rng.gen_ratio(1, 20) {
        let len = rng.gen_range(0..300);
        return (0..len).map(|_| rng.gen()).collect();
    }
    mutate_bytes(rng, seed)
}

/// `input` after 1 to 3 random edits.
pub fn mutate_bytes(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.gen_range(1..=3) {
        let pos = rng.gen_range(0..=v.len());
        match rng.gen_range(0..8) {
            0 if !v.is_empty() => {
                let i = pos.min(v.len() - 1);
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 => v.insert(pos, rng.gen()),
            2 if pos < v.len() => {
                v.remove(pos);
            }
            3 | 4 => {
                let s = SPLICES[rng.gen_range(0..SPLICES.len())];
                v.splice(pos..pos, s.iter().copied());
            }
            5 if pos < v.len() => {
                // Overwrite a byte with a splice's first byte (replaces rather than shifts).
                let s = SPLICES[rng.gen_range(0..SPLICES.len())];
                v[pos] = s[0];
            }
            6 => {
                // Duplicate a short range (repeated headers, repeated digits).
                let end = (pos + rng.gen_range(0..24)).min(v.len());
                let dup: Vec<u8> = v[pos..end].to_vec();
                v.splice(end..end, dup);
            }
            _ => v.truncate(pos),
        }
    }
    v
}
