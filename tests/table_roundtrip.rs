//! Round trips of the table grammar: `parse(format(t)) == t` for generated tables, and the
//! fuzz drivers over their seed corpus.

use dmemu::table::parse_table;
use dmemu::testing::{fuzz, strategies};
use dmemu::Keys;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_table_survives_format_and_parse(t in strategies::any_table()) {
        let text = t.to_text(Keys::Shown);
        let back = parse_table(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&back, &t);
        prop_assert_eq!(back.to_text(Keys::Shown), text);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_table_parser(data in prop::collection::vec(any::<u8>(), 0..512)) {
        fuzz::table_text(&data);
        fuzz::concise_text(&data);
    }

    #[test]
    fn table_like_text_never_panics(text in "([0-9]{1,3} [0-9]{1,3} (linear|striped|zero|error|cache|thin)( [a-z0-9\\\\#]{1,4}){0,6}\n){1,4}") {
        fuzz::table_text(text.as_bytes());
    }
}

fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&path).unwrap() {
        let p = e.unwrap().path();
        out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
    }
    assert!(!out.is_empty(), "empty corpus {dir}");
    out
}

#[test]
fn fuzz_seed_corpus_table_parse_runs_clean() {
    for (_name, data) in corpus("fuzz/corpus/table_parse") {
        fuzz::table_text(&data);
    }
}

#[test]
fn fuzz_seed_corpus_concise_runs_clean() {
    for (_name, data) in corpus("fuzz/corpus/concise_parse") {
        fuzz::concise_text(&data);
    }
}

#[test]
fn fuzz_seed_corpus_thin_metadata_runs_clean() {
    for (_name, data) in corpus("fuzz/corpus/thin_metadata") {
        fuzz::thin_metadata(&data);
    }
}
