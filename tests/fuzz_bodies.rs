//! The fuzz targets' bodies (`fuzz/src/lib.rs`, which `scripts/fuzz.sh` runs under libFuzzer)
//! over their seeds, mutations of them, random bytes and edge cases: a few hundred inputs per
//! target, so that the normal test run checks the same properties on the stable toolchain.

// The file is the fuzz crate's library; here it is a private module.
#[allow(unreachable_pub)]
#[path = "../fuzz/src/lib.rs"]
mod bodies;

use std::path::PathBuf;

use switchboard_tests::Lcg;

/// Inputs per target besides the seeds.
const GENERATED: usize = 300;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.expect("a directory entry").path()).expect("a seed file"))
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// Inputs that parsers tend to choke on.
fn edge_cases() -> Vec<Vec<u8>> {
    let mut cases: Vec<Vec<u8>> = [
        &b""[..],
        b"\n",
        b"\0",
        b"svc/1\n",
        b"\n\n\n",
        b"{}",
        b"[]",
        b"null",
        b"~",
        b"\xef\xbb\xbf{}",
        b"svc/1\n{\"Addr\":\"\\u0000:1\"}",
        b"svc/1\n{\"endpoints\":[\"grpc://\"]}",
        b"svc/1\n{\"nodes\":[{}]}",
        b"svc/1\n:65535",
        b"svc/1\n[::1]:65536",
        b"Timeout: -1",
        b"Timeout: 18446744073709551616",
        b"Timeout: 1e309",
        b"Timeout = \"999999999999h\"",
        b"a: &a [*a, *a]",
        b"{\"methodConfig\":[{\"name\":[{\"service\":\"\"}],\"retryPolicy\":{\"maxAttempts\":1e300}}]}",
    ]
    .iter()
    .map(|c| c.to_vec())
    .collect();
    for open in [b'[', b'{'] {
        cases.push(vec![open; 10_000]);
    }
    cases.push(b"- ".repeat(5_000));
    cases.push(b"a = [".repeat(2_000));
    cases.push([&b"svc/1\n"[..], &vec![b'9'; 100_000]].concat());
    cases
}

/// Byte-level mutations of `seed`, as a fuzzer makes them.
fn mutate(seed: &[u8], other: &[u8], rng: &mut Lcg) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = |rng: &mut Lcg, len: usize| rng.below(len as u64 + 1) as usize;
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = at(rng, out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.truncate(at(rng, out.len())),
            2 => {
                let i = at(rng, out.len());
                out.insert(i, rng.below(256) as u8);
            }
            3 => {
                let i = at(rng, out.len());
                out.insert(
                    i,
                    *b"\"{}[],:\n\\0"
                        .get(rng.below(11) as usize)
                        .unwrap_or(&b'x'),
                );
            }
            4 if !other.is_empty() => {
                let (i, j) = (at(rng, out.len()), at(rng, other.len()));
                out.truncate(i);
                out.extend_from_slice(&other[j..]);
            }
            _ => {
                let (i, j) = (at(rng, out.len()), at(rng, out.len()));
                let (i, j) = (i.min(j), i.max(j));
                let chunk = out[i..j].to_vec();
                out.splice(j..j, chunk);
            }
        }
    }
    out
}

fn corpus(target: &str, rng: &mut Lcg) -> Vec<Vec<u8>> {
    let seeds = seeds(target);
    let mut inputs = seeds.clone();
    inputs.extend(edge_cases());
    for n in 0..GENERATED {
        let seed = &seeds[n % seeds.len()];
        if n % 5 == 4 {
            let len = rng.below(64) as usize;
            inputs.push((0..len).map(|_| rng.below(256) as u8).collect());
        } else {
            let other = &seeds[rng.below(seeds.len() as u64) as usize];
            inputs.push(mutate(seed, other, rng));
        }
    }
    inputs
}

#[test]
fn every_fuzz_target_body_holds_on_its_corpus() {
    let mut rng = Lcg(0x5eed);
    for (target, body) in bodies::TARGETS {
        let inputs = corpus(target, &mut rng);
        assert!(inputs.len() >= GENERATED, "{target}");
        for input in &inputs {
            body(input);
        }
    }
}

#[test]
fn every_fuzz_target_has_a_file_and_seeds() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (target, _) in bodies::TARGETS {
        let file = root.join("fuzz_targets").join(format!("{target}.rs"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(&format!("switchboard_fuzz::{target}(")),
            "{}",
            file.display()
        );
        assert!(!seeds(target).is_empty());
    }
}
