//! The tokenizer on the request path, in time per call:
//!
//! - `tokens/count/prompt_short`: the prompt estimate every request pays
//!   before its reservation (`"Say something."`, the load benchmark's).
//! - `tokens/count/text_4k`: counting 4 KiB of English prose (usage
//!   estimates, and the ceiling check on long answers).
//! - `tokens/count/long_word_64k`: a 64 KiB "word" of repeated letters,
//!   the worst case of byte-pair merging (a hostile prompt).
//! - `tokens/truncate/text_4k_100`: cutting prose at 100 tokens.
//!
//! Run with `cargo bench -p sluice-benches --bench tokens`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::tokens;

fn prose(bytes: usize) -> String {
    let words = [
        "The",
        " weather",
        " in",
        " San",
        " Francisco",
        " is",
        " mild",
        ",",
        " with",
        " fog",
        " rolling",
        " in",
        " from",
        " the",
        " Pacific",
        " most",
        " mornings",
        ".",
        "\n",
    ];
    let mut s = String::new();
    for w in words.iter().cycle() {
        if s.len() + w.len() > bytes {
            break;
        }
        s.push_str(w);
    }
    s
}

fn bench(c: &mut Criterion) {
    tokens::init();
    let mut g = c.benchmark_group("tokens");
    g.bench_function("count/prompt_short", |b| {
        b.iter(|| tokens::count(black_box("Say something.")))
    });
    let text = prose(4096);
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("count/text_4k", |b| {
        b.iter(|| tokens::count(black_box(&text)))
    });
    g.bench_function("truncate/text_4k_100", |b| {
        b.iter(|| tokens::truncate(black_box(&text), 100))
    });
    let word = "ab".repeat(32 * 1024);
    g.throughput(Throughput::Bytes(word.len() as u64));
    g.bench_function("count/long_word_64k", |b| {
        b.iter(|| tokens::count(black_box(&word)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
