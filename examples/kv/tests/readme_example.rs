//! The top README's "Writing actors" program is `examples/readme.rs`, which the build
//! compiles: the README's code cannot stop compiling unnoticed.

#[test]
fn the_readme_program_is_the_example_that_compiles() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let section = &readme[readme
        .find("## Writing actors")
        .expect("README has a \"Writing actors\" section")..];
    let open = section.find("```rust\n").expect("a rust block in it") + "```rust\n".len();
    let block = &section[open..open + section[open..].find("```").unwrap()];
    let example = include_str!("../examples/readme.rs");
    let code = example
        .split_once("\n\n")
        .map(|(_header, code)| code)
        .unwrap();
    assert_eq!(
        block, code,
        "README's \"Writing actors\" program differs from examples/kv/examples/readme.rs"
    );
}
