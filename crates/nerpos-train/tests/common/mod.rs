//! A tiny world to train in: a 2-layer random BERT (the model crate's fixture, head removed), a
//! 100-word vocabulary, and a generated corpus whose tags a model can learn in a few hundred steps.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use candle_core::{Device, Tensor};

/// The trainer under test (the tiny_world example, which shares this module, has no such binary).
pub const BIN: &str = match option_env!("CARGO_BIN_EXE_nerpos-train") {
    Some(b) => b,
    None => "nerpos-train",
};

const NAMES: [&str; 10] = [
    "john", "mary", "ahmed", "li", "olga", "pedro", "anna", "ken", "sara", "omar",
];
const SURNAMES: [&str; 8] = [
    "smith", "chen", "garcia", "ivanova", "khan", "muller", "rossi", "tanaka",
];
const CITIES: [&str; 10] = [
    "paris", "london", "cairo", "lima", "oslo", "delhi", "tokyo", "rome", "quito", "dakar",
];
const ORGS: [&str; 8] = [
    "acme", "globex", "initech", "hooli", "umbrella", "vandelay", "wonka", "stark",
];
const OTHER: [&str; 20] = [
    "the", "of", "in", "met", "visited", "said", "on", "monday", "and", "left", "joined", "from",
    "a", "group", "today", "people", "went", "to", "with", "news",
];

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub model: PathBuf,
    pub data: PathBuf,
}

fn vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for w in NAMES
        .iter()
        .chain(&SURNAMES)
        .chain(&CITIES)
        .chain(&ORGS)
        .chain(&OTHER)
    {
        v.push(w.to_string());
    }
    while v.len() < 100 {
        v.push(format!("##x{}", v.len()));
    }
    v
}

/// xorshift, so the corpus needs no extra dependency and is the same everywhere.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// `sentences` GMB rows: templates mixing persons, cities and organisations.
fn corpus(sentences: usize) -> String {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut out = String::from("Sentence #,Word,POS,Tag\n");
    for s in 0..sentences {
        let mut toks: Vec<(String, &str, &str)> = Vec::new();
        let person = |rng: &mut Rng, toks: &mut Vec<(String, &str, &str)>| {
            toks.push((NAMES[rng.next(NAMES.len())].into(), "NNP", "B-per"));
            if rng.next(2) == 0 {
                toks.push((SURNAMES[rng.next(SURNAMES.len())].into(), "NNP", "I-per"));
            }
        };
        match rng.next(3) {
            0 => {
                person(&mut rng, &mut toks);
                toks.push(("visited".into(), "VBD", "O"));
                toks.push((CITIES[rng.next(CITIES.len())].into(), "NNP", "B-geo"));
            }
            1 => {
                toks.push(("the".into(), "DT", "O"));
                toks.push((ORGS[rng.next(ORGS.len())].into(), "NNP", "B-org"));
                toks.push(("group".into(), "NN", "O"));
                toks.push(("met".into(), "VBD", "O"));
                person(&mut rng, &mut toks);
                toks.push(("in".into(), "IN", "O"));
                toks.push((CITIES[rng.next(CITIES.len())].into(), "NNP", "B-geo"));
            }
            _ => {
                person(&mut rng, &mut toks);
                toks.push(("joined".into(), "VBD", "O"));
                toks.push((ORGS[rng.next(ORGS.len())].into(), "NNP", "B-org"));
                toks.push(("on".into(), "IN", "O"));
                toks.push(("monday".into(), "NNP", "O"));
            }
        }
        for _ in 0..rng.next(3) {
            toks.push((OTHER[rng.next(OTHER.len())].into(), "NN", "O"));
        }
        toks.push((".".into(), ".", "O"));
        for (i, (w, p, t)) in toks.iter().enumerate() {
            let id = if i == 0 {
                format!("Sentence: {}", s + 1)
            } else {
                String::new()
            };
            out.push_str(&format!("{id},{w},{p},{t}\n"));
        }
    }
    out
}

/// The same corpus as CoNLL `word tag` lines: a corpus without POS tags.
pub fn conll_without_pos(sentences: usize) -> String {
    let mut out = String::new();
    for line in corpus(sentences).lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        if !fields[0].is_empty() && !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("{} {}\n", fields[1], fields[3]));
    }
    out
}

/// The model folder (a 2-layer random BERT without head) and a prepared dataset of `sentences`.
pub fn fixture(sentences: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture_at(dir.path(), sentences);
    Fixture { dir, model, data }
}

/// The tiny world written into `dir`: (model folder, dataset folder).
pub fn fixture_at(dir: &Path, sentences: usize) -> (PathBuf, PathBuf) {
    let model = dir.join("bert");
    std::fs::create_dir_all(&model).unwrap();
    let src = nerpos_testdata::repo_root().join("crates/nerpos-model/tests/fixtures/tiny/model");
    std::fs::copy(src.join("config.json"), model.join("config.json")).unwrap();
    let mut w =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    w.retain(|k, _| !(k.starts_with("classifier") || k.starts_with("pos_embedding")));
    candle_core::safetensors::save(&w, model.join("model.safetensors")).unwrap();
    std::fs::write(model.join("vocab.txt"), vocab().join("\n") + "\n").unwrap();
    std::fs::write(
        model.join("tokenizer_config.json"),
        r#"{"do_lower_case": true}"#,
    )
    .unwrap();
    let csv = dir.join("corpus.csv");
    std::fs::write(&csv, corpus(sentences)).unwrap();
    let data = dir.join("data");
    let mut opts = nerpos_prep::PrepareOptions::new(
        nerpos_prep::Input::One(csv),
        nerpos_prep::corpus::ReadOptions::new(nerpos_prep::corpus::Format::Gmb),
        model.clone(),
        data.clone(),
    );
    opts.max_len = 12; // a few sentences become two windows
    nerpos_prep::prepare(&opts).unwrap();
    (model, data)
}

/// A configuration file for the fixture; `extra` lines (`key = value`) are added or replace the
/// defaults.
pub fn config(f: &Fixture, out: &Path, extra: &str) -> PathBuf {
    let p = out.with_extension("toml");
    let base = format!(
        "data = {:?}\nmodel = {:?}\nout = {:?}\nbatch_size = 8\nlr = 1e-3\nepochs = 2\nwarmup_ratio = 0.1\nlog_every = 1\neval_batch_size = 16",
        f.data, f.model, out
    );
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_owned();
    let overridden: Vec<String> = extra.lines().map(key).filter(|k| !k.is_empty()).collect();
    let mut text: Vec<String> = base
        .lines()
        .filter(|l| !overridden.contains(&key(l)))
        .map(str::to_owned)
        .collect();
    text.extend(extra.lines().map(str::to_owned));
    std::fs::write(&p, text.join("\n") + "\n").unwrap();
    p
}

fn command(args: &[&str], env: &[(String, String)]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("NERPOS_LOG", "info")
        .env("RAYON_NUM_THREADS", "1");
    for k in [
        "RANK",
        "WORLD_SIZE",
        "SLURM_PROCID",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

pub fn train(args: &[&str]) -> Output {
    command(args, &[]).output().unwrap()
}

/// `train` with extra environment variables (test hooks).
pub fn train_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    command(args, &env).output().unwrap()
}

/// TensorBoard's own event reader (tests/reference/read_tensorboard.py) finds the scalars ours finds
/// (`ours`: step, tag, value). A non-finite value (a diverged step's loss) is `null` in its output.
pub fn tensorboard_reads_them_alike(name: &str, tb: &Path, ours: Vec<(u64, String, f32)>) {
    let Some(python) =
        nerpos_testdata::reference_python(name, &["tensorboard"], "requirements-model.txt")
    else {
        return;
    };
    let script = nerpos_testdata::repo_root().join("tests/reference/read_tensorboard.py");
    let o = Command::new(python).arg(script).arg(tb).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    type Scalars = std::collections::BTreeMap<String, Vec<(u64, Option<f32>)>>;
    let theirs: Scalars = serde_json::from_slice(&o.stdout).unwrap();
    let mut mine = Scalars::new();
    for (s, t, v) in ours {
        mine.entry(t)
            .or_default()
            .push((s, v.is_finite().then_some(v)));
    }
    assert_eq!(theirs, mine, "TensorBoard's reader and ours disagree");
    for tag in [
        "train/loss",
        "train/lr",
        "train/tokens_per_s",
        "dev/f1_micro",
    ] {
        assert!(theirs.contains_key(tag), "TensorBoard lists no {tag}");
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `world` ranks (torchrun-style variables) with `args`.
pub fn spawn_ranks(world: usize, args: &[&str], extra_env: &[(&str, &str)]) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|r| {
            let mut env: Vec<(String, String)> = vec![
                ("RANK".into(), r.to_string()),
                ("WORLD_SIZE".into(), world.to_string()),
                ("LOCAL_RANK".into(), r.to_string()),
                ("LOCAL_WORLD_SIZE".into(), world.to_string()),
                ("MASTER_ADDR".into(), "127.0.0.1".into()),
                ("MASTER_PORT".into(), port.clone()),
            ];
            env.extend(
                extra_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            command(args, &env)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Every parameter of a saved model folder.
pub fn weights(folder: &Path) -> HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(folder.join("model.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t): (String, Tensor)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

pub fn max_abs_diff(a: &HashMap<String, Vec<f32>>, b: &HashMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, v)| {
            v.iter()
                .zip(&b[k])
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        })
        .fold(0f32, f32::max)
}

pub fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

pub fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "nerpos-train failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
