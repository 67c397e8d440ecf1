//! Writes the trainer tests' tiny world (a 2-layer random BERT folder and a prepared synthetic corpus)
//! into a folder, for tests that drive the binaries from the shell (tests/slurm/run.sh).
//! Usage: tiny_world DIR [SENTENCES]   (prints the model and dataset folders)

#[path = "../tests/common/mod.rs"]
mod common;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: tiny_world DIR [SENTENCES]");
        std::process::exit(2);
    };
    let sentences = args.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    let dir = std::path::PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: creating {}: {e}", dir.display());
        std::process::exit(1);
    }
    let (model, data) = common::fixture_at(&dir, sentences);
    println!("{}\t{}", model.display(), data.display());
}
