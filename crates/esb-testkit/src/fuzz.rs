//! Bounded fuzzing on stable Rust, for the parsers that face untrusted input: a
//! deterministic generator ([`Rng`]), byte-level mutations of valid inputs ([`mutate`]),
//! and token soup ([`soup`]). A test runs a fixed number of cases (CI stays bounded and
//! reproducible; `ESB_FUZZ_CASES` raises it for longer runs, `ESB_FUZZ_SEED` changes the
//! stream) and fails on the first panic, naming the input.

/// xorshift64*: small and deterministic.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `ESB_FUZZ_SEED` (default `seed`).
    pub fn new(seed: u64) -> Rng {
        let s = std::env::var("ESB_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(seed);
        Rng(s | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One of `items`.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// How many cases a fuzz test runs: `ESB_FUZZ_CASES`, else `default`.
pub fn cases(default: usize) -> usize {
    std::env::var("ESB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `input` with a few random edits: bytes deleted, duplicated, replaced by one of
/// `specials` or a random byte, spans repeated (deep nesting, long runs).
pub fn mutate(r: &mut Rng, input: &str, specials: &[&str]) -> String {
    let mut b = input.as_bytes().to_vec();
    for _ in 0..1 + r.below(4) {
        let at = if b.is_empty() {
            0
        } else {
            r.below(b.len() + 1)
        };
        match r.below(6) {
            0 if at < b.len() => {
                let n = 1 + r.below(8.min(b.len() - at));
                b.drain(at..at + n);
            }
            1 => {
                let s = r.pick(specials).as_bytes().to_vec();
                b.splice(at..at, s);
            }
            2 if at < b.len() => b[at] = (r.next_u64() & 0xff) as u8,
            3 => {
                let s = r.pick(specials).repeat(1 + r.below(300));
                b.splice(at..at, s.into_bytes());
            }
            4 if at < b.len() => {
                let end = (at + 1 + r.below(32)).min(b.len());
                let span = b[at..end].to_vec();
                b.splice(at..at, span);
            }
            _ => b.insert(at.min(b.len()), b"\0\"'\\{}[]()\n\t:"[r.below(13)]),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// A string of `n` random tokens from `tokens`, joined by nothing or a space.
pub fn soup(r: &mut Rng, tokens: &[&str], n: usize) -> String {
    let mut s = String::new();
    for _ in 0..n {
        s.push_str(r.pick(tokens));
        if r.below(2) == 0 {
            s.push(' ');
        }
    }
    s
}
