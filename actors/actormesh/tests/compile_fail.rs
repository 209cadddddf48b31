//! The macros' mistakes that teach: each case in `compile_fail/` must fail to compile with
//! the error in its `.stderr` file (TRYBUILD=overwrite writes them anew after a change).

#[test]
fn macro_mistakes_get_errors_that_say_what_to_do() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}
