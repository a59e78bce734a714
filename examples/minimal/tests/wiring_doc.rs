//! `docs/wiring.md` shows this example's code: every ```` ```rust ```` block there must appear,
//! as written, in the example's sources, so the page cannot drift from what CI builds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

const PAGE: &str = include_str!("../../../docs/wiring.md");
const SOURCES: [&str; 4] = [
    include_str!("../src/lib.rs"),
    include_str!("../src/main.rs"),
    include_str!("../src/notes.rs"),
    include_str!("../src/members.rs"),
];

/// The ```` ```rust ```` blocks of `page` (not `rust,ignore` sketches).
fn rust_blocks(page: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in page.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```rust") => current = Some(Vec::new()),
            (Some(block), "```") => {
                blocks.push(block.join("\n"));
                current = None;
            }
            (Some(block), _) => block.push(line),
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed code block");
    blocks
}

#[test]
fn every_rust_block_on_the_page_is_the_examples_code() {
    let blocks = rust_blocks(PAGE);
    assert!(blocks.len() >= 5, "the page shows each step's code");
    for block in &blocks {
        assert!(
            SOURCES.iter().any(|source| source.contains(block.as_str())),
            "docs/wiring.md shows code that is not in examples/minimal:\n{block}"
        );
    }
}

#[test]
fn a_changed_block_is_caught() {
    // The check itself: a block that differs by one character is not found.
    let page = "```rust\npub fn migrations(runtime: &str) -> Result<String, Errors> {\n```\n";
    let block = &rust_blocks(page)[0];
    assert!(!SOURCES.iter().any(|s| s.contains(block.as_str())));
}
