//! One AFL++ harness for every fuzz target: `AM_FUZZ_TARGET` names the target
//! (`actormesh_integration::fuzz::TARGETS`); `scripts/fuzz` sets it. Outside AFL,
//! `am-fuzz --list` prints the targets and `am-fuzz --write-seeds <target> <dir>` writes
//! its seeds (valid encodings) as a first corpus.

use actormesh_integration::fuzz;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--list") => {
            for (name, _) in fuzz::TARGETS {
                println!("{name}");
            }
            return;
        }
        Some("--write-seeds") => {
            let (Some(target), Some(dir)) = (args.get(2), args.get(3)) else {
                eprintln!("usage: am-fuzz --write-seeds <target> <dir>");
                std::process::exit(2);
            };
            for (i, seed) in fuzz::seeds(target).iter().enumerate() {
                std::fs::write(format!("{dir}/seed-{i}"), seed).expect("write a seed");
            }
            return;
        }
        _ => {}
    }
    let name = std::env::var("AM_FUZZ_TARGET").unwrap_or_default();
    let Some(target) = fuzz::target(&name) else {
        let names: Vec<&str> = fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("AM_FUZZ_TARGET={name:?} is not a target (expected one of {names:?})");
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
