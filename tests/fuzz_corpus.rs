//! Replays the fuzz seed corpora (`fuzz/corpus/answer`, `fuzz/corpus/load`) with the fuzz
//! targets' own checks, so plain `cargo test` (stable, no cargo-fuzz) keeps them passing.
//! A crash that fuzzing finds is fixed by adding its input to the corpus.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hickory_proto::op::ResponseCode;

/// The files of `fuzz/corpus/<target>`, sorted, skipping dotfiles.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    files.sort();
    files
}

#[test]
fn answer_corpus_replays_and_covers_every_rcode() {
    let snapshot = checks::fixture();
    let files = corpus("answer");
    assert!(files.len() >= 20, "only {} answer seeds", files.len());
    let mut rcodes = BTreeSet::new();
    for (name, input) in &files {
        let reply = checks::check_answer(&snapshot, input);
        // Seeds named `crafted-response` or `crafted-runt` must be dropped; all others answered.
        let dropped = name.starts_with("crafted-response") || name.starts_with("crafted-runt");
        assert_eq!(reply.is_none(), dropped, "{name}: {reply:?}");
        if let Some(m) = reply {
            rcodes.insert(u16::from(m.metadata.response_code));
            if name.ends_with("-tcp") {
                assert_eq!(m.answers.len(), 40, "{name}: the big TXT over TCP");
            }
            if name.contains("bufsize512") {
                assert!(m.metadata.truncation, "{name}: truncated over UDP");
            }
        }
    }
    for rcode in [
        ResponseCode::NoError,
        ResponseCode::FormErr,
        ResponseCode::NXDomain,
        ResponseCode::NotImp,
        ResponseCode::Refused,
        ResponseCode::BADVERS,
    ] {
        assert!(
            rcodes.contains(&u16::from(rcode)),
            "no seed answered {rcode}: {rcodes:?}"
        );
    }
}

#[test]
fn load_corpus_replays_with_valid_and_broken_seeds() {
    let files = corpus("load");
    assert!(files.len() >= 8, "only {} load seeds", files.len());
    for (name, input) in &files {
        let diagnostics = checks::check_load(input);
        // Seeds named `valid-*` load; `broken-*` and the rest do not.
        let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(
            diagnostics.is_empty(),
            name.starts_with("valid-"),
            "{name}: {text:#?}"
        );
    }
}

#[test]
fn head_corpus_replays() {
    let files = corpus("head");
    assert!(files.len() >= 4, "only {} head seeds", files.len());
    for (name, input) in &files {
        assert!(
            checks::check_head(input),
            "{name}: does not parse as a request head"
        );
    }
}
