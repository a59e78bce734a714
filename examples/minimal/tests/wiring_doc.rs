//! `docs/wiring.md` shows this example's code: every ```` ```rust ```` block there must appear,
//! as written, in the example's sources or tests, and every ```` ```csv ```` block in the
//! authorization matrix's table, so the page cannot drift from what CI builds and runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

const PAGE: &str = include_str!("../../../docs/wiring.md");
const SOURCES: [&str; 6] = [
    include_str!("../src/lib.rs"),
    include_str!("../src/main.rs"),
    include_str!("../src/notes.rs"),
    include_str!("../src/members.rs"),
    include_str!("authz_matrix.rs"),
    include_str!("common/mod.rs"),
];
const MATRIX: &str = include_str!("authz_matrix.csv");

/// The blocks of `page` fenced as ```` ```<kind> ```` exactly (so not `rust,ignore` sketches).
fn blocks(page: &str, kind: &str) -> Vec<String> {
    let fence = format!("```{kind}");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in page.lines() {
        match (&mut current, line.trim_end()) {
            (None, open) if open == fence => current = Some(Vec::new()),
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

fn rust_blocks(page: &str) -> Vec<String> {
    blocks(page, "rust")
}

#[test]
fn every_rust_block_on_the_page_is_the_examples_code() {
    let blocks = rust_blocks(PAGE);
    assert!(
        blocks.len() >= 7,
        "the page shows each step's code and the matrix gate's"
    );
    for block in &blocks {
        assert!(
            SOURCES.iter().any(|source| source.contains(block.as_str())),
            "docs/wiring.md shows code that is not in examples/minimal:\n{block}"
        );
    }
}

#[test]
fn the_pages_matrix_is_the_examples_table() {
    let blocks = blocks(PAGE, "csv");
    assert!(!blocks.is_empty(), "the page shows the matrix");
    for block in &blocks {
        assert!(
            MATRIX.contains(block.as_str()),
            "docs/wiring.md shows a table that is not in tests/authz_matrix.csv:\n{block}"
        );
    }
}

#[test]
fn no_rust_block_on_the_page_is_left_unchecked() {
    // A ```` ```rust,ignore ```` (or `no_run`, ...) block would escape both the compiler and the
    // check above: the page has none.
    for line in PAGE.lines() {
        let line = line.trim();
        assert!(
            !(line.starts_with("```rust") && line != "```rust"),
            "docs/wiring.md has a code block that is not checked: {line}"
        );
    }
}

#[test]
fn the_wiring_is_as_short_as_the_page_says() {
    let promise = "`src/lib.rs` (under 120 lines of code, not counting comments and blank lines)";
    assert!(
        PAGE.contains(promise),
        "the page's promise changed: update this test"
    );
    let code = SOURCES[0]
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .count();
    assert!(
        code < 120,
        "src/lib.rs has {code} lines of code; the page promises under 120"
    );
}

#[test]
fn a_changed_block_is_caught() {
    // The check itself: a block that differs by one character is not found, in the sources or
    // in the tests.
    let page = "```rust\npub fn migrations(runtime: &str) -> Result<String, Errors> {\n```\n";
    let block = &rust_blocks(page)[0];
    assert!(!SOURCES.iter().any(|s| s.contains(block.as_str())));
    let page = "```rust\nasync fn every_route_answers_every_role_as_the_matrix_say() {\n```\n";
    let block = &rust_blocks(page)[0];
    assert!(!SOURCES.iter().any(|s| s.contains(block.as_str())));
    let page = "```csv\nGET,/notes/{id},401,403,200,200,200\n```\n";
    assert!(!MATRIX.contains(blocks(page, "csv")[0].as_str()));
}
