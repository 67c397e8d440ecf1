//! The prepare pipeline: read → relabel → split → vocabularies → tokenize → align → shards + manifest,
//! written into a temporary directory that is renamed into place only when complete.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use rayon::prelude::*;
use tracing::{debug, info, warn};

use crate::align::{AlignStats, Aligner, SentenceInput};
use crate::corpus::{self, Corpus, ReadOptions};
use crate::error::{PrepError, Result};
use crate::formats::Settings;
use crate::manifest::{
    self, CorpusStats, LabelSubwords, Manifest, Options, POS_PAD_ID, POS_UNK_ID, Source,
    SourceFile, Split, SplitInfo, Splits, TokenizerInfo,
};
use crate::shards::{self, Row};
use crate::tags::{self, Relabeler, Scheme};
use crate::tokenize::{SubwordTokenizer, WordPieces};
use crate::{split, vocab};

/// Where the corpus comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// One file, split into train/dev/test at random (`split`, `seed`).
    One(PathBuf),
    /// A corpus shipped pre-split: each file's sentences go to its split, in file order; a split
    /// without a file is empty.
    Split {
        train: PathBuf,
        dev: Option<PathBuf>,
        test: Option<PathBuf>,
    },
}

impl Input {
    /// The files to read, with the split each one fills (none: split at random).
    pub fn files(&self) -> Vec<(Option<Split>, &Path)> {
        match self {
            Input::One(p) => vec![(None, p.as_path())],
            Input::Split { train, dev, test } => {
                let mut v = vec![(Some(Split::Train), train.as_path())];
                v.extend(dev.as_deref().map(|p| (Some(Split::Dev), p)));
                v.extend(test.as_deref().map(|p| (Some(Split::Test), p)));
                v
            }
        }
    }
}

/// Everything `nerpos-prep` can be asked to do.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub input: Input,
    pub read: ReadOptions,
    pub tokenizer: PathBuf,
    pub out: PathBuf,
    /// The input's tag scheme (converted to IOB2).
    pub scheme: Scheme,
    pub drop_types: Vec<String>,
    /// Cross each POS tag with its word's shape (`NNP|Aa`): casing for an uncased checkpoint.
    pub pos_shape: bool,
    pub labels_file: Option<PathBuf>,
    pub max_len: usize,
    pub window_overlap: usize,
    pub label_subwords: LabelSubwords,
    pub split: [f64; 3],
    pub seed: u64,
    pub shard_rows: usize,
    pub force: bool,
    /// Show progress bars (on a terminal).
    pub progress: bool,
}

impl PrepareOptions {
    /// Defaults for everything but the input and the paths.
    pub fn new(input: Input, read: ReadOptions, tokenizer: PathBuf, out: PathBuf) -> Self {
        PrepareOptions {
            input,
            read,
            tokenizer,
            out,
            scheme: Scheme::Iob2,
            drop_types: Vec::new(),
            pos_shape: false,
            labels_file: None,
            max_len: 128,
            window_overlap: 0,
            label_subwords: LabelSubwords::First,
            split: [0.8, 0.1, 0.1],
            seed: 42,
            shard_rows: 8192,
            force: false,
            progress: false,
        }
    }
}

/// Sentences checked against whole-sentence tokenization on every run.
const CHECKED_SENTENCES: usize = 512;

fn bar(show: bool, len: usize, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(nerpos_run::cli::count_style());
    pb.set_message(what.to_owned());
    pb
}

/// Runs the whole pipeline and returns the manifest written to `opts.out`.
pub fn prepare(opts: &PrepareOptions) -> Result<Manifest> {
    let started = Instant::now();
    check_options(opts)?;
    if opts.out.exists() && !opts.force {
        return Err(PrepError::Options(format!(
            "{} already exists (pass --force to replace it)",
            opts.out.display()
        )));
    }
    let tokenizer = load_tokenizer(opts)?;
    let Read {
        corpus,
        files,
        parts,
    } = read_files(opts)?;
    let corpus = if opts.pos_shape {
        corpus.with_pos_shapes()
    } else {
        corpus
    };
    debug!(secs = started.elapsed().as_secs_f32(), "read and parsed");

    check_drop_types(&corpus, &opts.drop_types)?;
    let (pieces, labelling) = tokenize_and_label(opts, &tokenizer, &corpus, parts)?;
    debug!(
        secs = started.elapsed().as_secs_f32(),
        "vocabularies and sub-words ready"
    );

    let tmp = nerpos_run::staging_dir(&opts.out)?;
    let aligner = aligner(opts, &tokenizer, &labelling.label_vocab);
    let mut aligned = align_splits(opts, &corpus, &pieces, &aligner, &labelling);
    debug!(secs = started.elapsed().as_secs_f32(), "aligned");
    write_shards(opts, tmp.path(), &mut aligned)?;
    debug!(secs = started.elapsed().as_secs_f32(), "written");
    report_windows(opts, &aligned);

    let stats = corpus_stats(&corpus, &pieces, &labelling, &aligned);
    let splits = splits_of(aligned);
    let manifest = Manifest {
        format: manifest::FORMAT.into(),
        format_version: manifest::FORMAT_VERSION,
        created_by: format!("nerpos-prep {}", env!("CARGO_PKG_VERSION")),
        source: files[0].source.clone(),
        files,
        has_pos: corpus.has_pos,
        tokenizer: tokenizer_info(opts, &tokenizer),
        options: options_of(opts),
        labels: labelling.label_vocab,
        label_ignore_id: manifest::IGNORE_LABEL,
        pos: labelling.pos_vocab,
        pos_pad_id: POS_PAD_ID,
        pos_unk_id: POS_UNK_ID,
        corpus: stats,
        splits,
    };
    let manifest_path = tmp.path().join(manifest::MANIFEST);
    std::fs::write(&manifest_path, manifest.to_json())
        .map_err(|e| PrepError::io(&manifest_path, e))?;
    nerpos_run::publish_dir(tmp, &opts.out)?;
    info!(
        out = %opts.out.display(),
        secs = started.elapsed().as_secs_f32(),
        "dataset written"
    );
    Ok(manifest)
}

/// The checkpoint's tokenizer, refused when `--max-len` leaves no room beside its special tokens.
fn load_tokenizer(opts: &PrepareOptions) -> Result<SubwordTokenizer> {
    let tokenizer = SubwordTokenizer::load(&opts.tokenizer)?;
    if tokenizer.num_special() >= opts.max_len {
        return Err(PrepError::Options(format!(
            "--max-len {} leaves no room for words beside {} special tokens",
            opts.max_len,
            tokenizer.num_special()
        )));
    }
    Ok(tokenizer)
}

/// Tokenizes the distinct words and fixes labels, splits and vocabularies — independent work, run
/// side by side — then warns about what the user should know of either.
fn tokenize_and_label(
    opts: &PrepareOptions,
    tokenizer: &SubwordTokenizer,
    corpus: &Corpus,
    parts: Option<[Vec<usize>; 3]>,
) -> Result<(WordPieces, Labelling)> {
    let (tokenized, labelling) = rayon::join(
        || -> Result<(WordPieces, usize)> {
            let pieces = tokenizer.word_pieces(corpus.words.names())?;
            let checked = check_sample(tokenizer, corpus, &pieces)?;
            Ok((pieces, checked))
        },
        || label(corpus, opts, parts),
    );
    let (pieces, checked) = tokenized?;
    let labelling = labelling?;
    for &w in &pieces.empty {
        warn!(
            word = corpus.words.name(w),
            "the tokenizer gives this word no sub-word; using [UNK]"
        );
    }
    if let Some(first) = &labelling.relabelled.first_violation {
        warn!(
            violations = labelling.relabelled.violations,
            first = %first,
            "tagged tokens outside any well-formed {} chunk were read as O, as seqeval's strict mode \
             reads them{}",
            opts.scheme.name(),
            if opts.scheme == Scheme::Iob2 {
                " (if the corpus is IOB1, pass --scheme iob1)"
            } else {
                ""
            }
        );
    }
    info!(
        distinct_words = corpus.words.len(),
        checked_sentences = checked,
        "tokenized; sample of whole sentences agrees with per-word tokenization"
    );
    Ok((pieces, labelling))
}

fn aligner(opts: &PrepareOptions, tokenizer: &SubwordTokenizer, label_vocab: &[String]) -> Aligner {
    Aligner {
        prefix: tokenizer.prefix.clone(),
        suffix: tokenizer.suffix.clone(),
        max_len: opts.max_len,
        overlap: opts.window_overlap,
        label_subwords: opts.label_subwords,
        continuation: continuation_labels(label_vocab),
    }
}

/// Train, dev and test aligned into rows of sub-words, in that order.
fn align_splits<'a>(
    opts: &PrepareOptions,
    corpus: &'a Corpus,
    pieces: &'a WordPieces,
    aligner: &'a Aligner,
    labelling: &'a Labelling,
) -> Vec<AlignedSplit<'a>> {
    let ctx = AlignContext {
        corpus,
        pieces,
        aligner,
        labels_of_token: &labelling.relabelled.labels_of_token,
        label_id: &labelling.label_id,
        label_names: &labelling.relabelled.relabeler.labels,
        pos_id: &labelling.pos_id,
        bar: bar(opts.progress, corpus.sentences.len(), "align"),
    };
    let aligned = labelling.parts.iter().map(|m| ctx.split(m)).collect();
    ctx.bar.finish_and_clear();
    aligned
}

/// Writes every split's shards under `dir` and records them in the splits' infos — all splits in one
/// parallel pass, so that small dev/test shards fill idle cores.
fn write_shards(opts: &PrepareOptions, dir: &Path, aligned: &mut [AlignedSplit]) -> Result<()> {
    let jobs: Vec<(usize, String, &[Row<&str>])> = Split::ALL
        .iter()
        .zip(aligned.iter())
        .enumerate()
        .flat_map(|(k, (split, a))| {
            a.rows
                .chunks(opts.shard_rows)
                .enumerate()
                .map(move |(i, chunk)| (k, format!("{}/part-{i:05}.parquet", split.name()), chunk))
        })
        .collect();
    for split in Split::ALL {
        let sub = dir.join(split.name());
        std::fs::create_dir_all(&sub).map_err(|e| PrepError::io(&sub, e))?;
    }
    let written: Vec<(usize, manifest::ShardInfo)> = jobs
        .par_iter()
        .map(|(k, file, chunk)| Ok((*k, shards::write(dir, file, chunk)?)))
        .collect::<Result<_>>()?;
    for (k, shard) in written {
        aligned[k].info.shards.push(shard);
    }
    Ok(())
}

fn report_windows(opts: &PrepareOptions, aligned: &[AlignedSplit]) {
    for (split, a) in Split::ALL.iter().zip(aligned) {
        if a.info.windowed_sentences > 0 {
            info!(
                split = split.name(),
                sentences = a.info.windowed_sentences,
                "sentences longer than --max-len {} split into windows",
                opts.max_len
            );
        }
    }
}

fn splits_of(aligned: Vec<AlignedSplit>) -> Splits {
    let mut infos = aligned.into_iter().map(|a| a.info);
    let mut next = || infos.next().expect("three splits");
    Splits {
        train: next(),
        dev: next(),
        test: next(),
    }
}

fn tokenizer_info(opts: &PrepareOptions, tokenizer: &SubwordTokenizer) -> TokenizerInfo {
    TokenizerInfo {
        path: absolute(&opts.tokenizer),
        files: tokenizer.files.clone(),
        fingerprint: tokenizer.fingerprint.clone(),
        pad_token_id: tokenizer.pad_id,
        unk_token_id: tokenizer.unk_id,
        prefix_ids: tokenizer.prefix.clone(),
        suffix_ids: tokenizer.suffix.clone(),
    }
}

/// The options that shaped the dataset, as the manifest records them.
fn options_of(opts: &PrepareOptions) -> Options {
    let settings = opts.read.format.reader().settings();
    Options {
        max_len: opts.max_len,
        window_overlap: opts.window_overlap,
        label_subwords: opts.label_subwords,
        scheme: opts.scheme,
        drop_types: opts.drop_types.clone(),
        pos_shape: opts.pos_shape,
        split: matches!(opts.input, Input::One(_)).then_some(opts.split),
        seed: opts.seed,
        shard_rows: opts.shard_rows,
        conll_columns: (settings == Settings::Columns).then_some((
            opts.read.conll.word,
            opts.read.conll.pos,
            opts.read.conll.tag,
        )),
        jsonl: (settings == Settings::Keys).then(|| opts.read.jsonl.clone()),
    }
}

fn corpus_stats(
    corpus: &Corpus,
    pieces: &WordPieces,
    labelling: &Labelling,
    aligned: &[AlignedSplit],
) -> CorpusStats {
    CorpusStats {
        sentences: corpus.sentences.len(),
        words: corpus.tokens.len(),
        distinct_words: corpus.words.len(),
        tags: corpus.tags.len(),
        pos_tags: if corpus.has_pos { corpus.pos.len() } else { 0 },
        longest_sentence_words: corpus.sentences.iter().map(|s| s.len).max().unwrap_or(0),
        longest_sentence_subwords: aligned
            .iter()
            .map(|a| a.longest_subwords)
            .max()
            .unwrap_or(0),
        words_without_subwords: corpus
            .tokens
            .iter()
            .filter(|t| pieces.empty.binary_search(&t.word).is_ok())
            .count(),
        truncated_words: aligned.iter().map(|a| a.truncated_words).sum(),
        scheme_violations: labelling.relabelled.violations,
        first_violation: labelling.relabelled.first_violation.clone(),
    }
}

/// The corpus read from every input file, one after the other.
struct Read {
    corpus: Corpus,
    files: Vec<SourceFile>,
    /// Sentence indices of train, dev, test of a pre-split corpus.
    parts: Option<[Vec<usize>; 3]>,
}

fn read_files(opts: &PrepareOptions) -> Result<Read> {
    let inputs = opts.input.files();
    // Files are hashed and parsed in parallel; the first error in file order is reported.
    let read: Vec<Result<(String, u64, Corpus)>> = inputs
        .par_iter()
        .map(|(_, path)| {
            let l = corpus::load(path, &opts.read)?;
            Ok((l.sha256, l.bytes, l.corpus))
        })
        .collect();
    let mut files = Vec::with_capacity(inputs.len());
    let mut parts: [Vec<usize>; 3] = Default::default();
    let mut all: Option<Corpus> = None;
    for ((split, path), result) in inputs.iter().zip(read) {
        let (sha256, bytes, corpus) = result?;
        info!(
            sentences = corpus.sentences.len(),
            words = corpus.tokens.len(),
            encoding = corpus.encoding.name(),
            split = split.map_or("all", Split::name),
            "read {}",
            path.display()
        );
        files.push(SourceFile {
            split: *split,
            source: Source {
                path: absolute(path),
                format: opts.read.format,
                encoding: corpus.encoding.name().into(),
                bytes,
                sha256,
            },
        });
        let start = all.as_ref().map_or(0, |c| c.sentences.len());
        if let Some(s) = split {
            let k = Split::ALL.iter().position(|x| x == s).expect("a split");
            parts[k].extend(start..start + corpus.sentences.len());
        }
        match &mut all {
            None => all = Some(corpus),
            Some(c) => c.append(corpus),
        }
    }
    Ok(Read {
        corpus: all.expect("at least one input file"),
        files,
        parts: matches!(opts.input, Input::Split { .. }).then_some(parts),
    })
}

/// Final labels, splits and vocabularies.
struct Labelling {
    relabelled: Relabelled,
    /// Sentence indices of train, dev, test.
    parts: [Vec<usize>; 3],
    label_vocab: Vec<String>,
    /// Vocabulary id of each of `relabelled.relabeler.labels`.
    label_id: Vec<i32>,
    pos_vocab: Vec<String>,
    /// Vocabulary id of each distinct POS tag of the corpus.
    pos_id: Vec<u32>,
}

fn label(
    corpus: &Corpus,
    opts: &PrepareOptions,
    parts: Option<[Vec<usize>; 3]>,
) -> Result<Labelling> {
    let relabelled = relabel(corpus, opts)?;
    let labels = &relabelled.relabeler.labels;
    let parts =
        parts.unwrap_or_else(|| split::assign(corpus.sentences.len(), opts.split, opts.seed));
    let label_vocab = vocab::labels(labels, opts.labels_file.as_deref(), opts.label_subwords)?;
    let label_id: Vec<i32> = labels
        .iter()
        .map(|l| {
            label_vocab
                .iter()
                .position(|v| v == l)
                .expect("labels cover the corpus") as i32
        })
        .collect();
    let (pos_vocab, pos_id) = pos_vocabulary(corpus, &parts[0])?;
    Ok(Labelling {
        relabelled,
        parts,
        label_vocab,
        label_id,
        pos_vocab,
        pos_id,
    })
}

/// Every token's tag in IOB2 with the dropped types gone, and the tagged tokens outside any
/// well-formed chunk (read as O).
struct Relabelled {
    relabeler: Relabeler,
    /// Final label (index into `relabeler.labels`) of every token.
    labels_of_token: Vec<u32>,
    /// Tagged tokens outside any well-formed chunk, and where the first is.
    violations: usize,
    first_violation: Option<String>,
}

fn relabel(corpus: &Corpus, opts: &PrepareOptions) -> Result<Relabelled> {
    let relabeler =
        Relabeler::new(corpus.tags.names(), &opts.drop_types, opts.scheme).map_err(|e| {
            let (file, line) = corpus.tag_lines[e.raw];
            corpus.error_at(
                file,
                line,
                format!(
                    "tag {:?} is not in the {} scheme ({})",
                    corpus.tags.name(e.raw as u32),
                    opts.scheme.name(),
                    tags::EXPECTED
                ),
            )
        })?;
    let mut labels_of_token: Vec<u32> = Vec::with_capacity(corpus.tokens.len());
    let (mut violations, mut first_violation) = (0, None);
    for s in &corpus.sentences {
        let raw = || corpus.tokens_of(s).iter().map(|t| t.tag);
        let bad = relabeler.sentence(raw(), &mut labels_of_token);
        violations += bad;
        if bad > 0 && first_violation.is_none() {
            let at = relabeler
                .first_violation(raw(), &labels_of_token[s.start..])
                .unwrap_or(0);
            first_violation = Some(corpus.location(s, at));
        }
    }
    Ok(Relabelled {
        relabeler,
        labels_of_token,
        violations,
        first_violation,
    })
}

/// The POS vocabulary (the tags seen in the training sentences `train`) and each corpus POS tag's id
/// in it.
fn pos_vocabulary(corpus: &Corpus, train: &[usize]) -> Result<(Vec<String>, Vec<u32>)> {
    let mut in_train = vec![false; corpus.pos.len()];
    for &i in train {
        for t in corpus.tokens_of(&corpus.sentences[i]) {
            in_train[t.pos as usize] = true;
        }
    }
    // A corpus without POS has only the placeholder tag: every token gets <unk>.
    let pos_vocab = vocab::pos(
        corpus
            .pos
            .names()
            .iter()
            .zip(&in_train)
            .filter(|(_, seen)| **seen && corpus.has_pos)
            .map(|(p, _)| p.as_str()),
    )?;
    // Dev/test POS tags unseen in training map to <unk>; the reserved names sort apart, so search the rest.
    let pos_id: Vec<u32> = corpus
        .pos
        .names()
        .iter()
        .map(|p| {
            pos_vocab[2..]
                .binary_search(p)
                .map_or(POS_UNK_ID, |i| i as u32 + 2)
        })
        .collect();
    Ok((pos_vocab, pos_id))
}

/// What alignment reads, shared by all sentences.
struct AlignContext<'a> {
    corpus: &'a Corpus,
    pieces: &'a WordPieces,
    aligner: &'a Aligner,
    /// Final label (index into `label_names`) of every token.
    labels_of_token: &'a [u32],
    /// Vocabulary id of each final label.
    label_id: &'a [i32],
    label_names: &'a [String],
    /// Vocabulary id of each distinct POS tag of the corpus.
    pos_id: &'a [u32],
    bar: ProgressBar,
}

/// One split's rows and counts.
struct AlignedSplit<'a> {
    rows: Vec<Row<&'a str>>,
    info: SplitInfo,
    truncated_words: usize,
    longest_subwords: usize,
}

impl<'a> AlignContext<'a> {
    fn sentence(&self, i: usize) -> (Vec<Row<&'a str>>, AlignStats, usize) {
        let corpus = self.corpus;
        let s = &corpus.sentences[i];
        let tokens = corpus.tokens_of(s);
        let labels = &self.labels_of_token[s.start..s.start + s.len];
        let input = SentenceInput {
            sentence_index: i as u32,
            sentence_id: &s.id,
            source_line: s.line as u32,
            pieces: tokens.iter().map(|t| self.pieces.of(t.word)).collect(),
            labels: labels.iter().map(|&l| self.label_id[l as usize]).collect(),
            pos_ids: tokens.iter().map(|t| self.pos_id[t.pos as usize]).collect(),
            words: tokens.iter().map(|t| corpus.words.name(t.word)).collect(),
            pos: tokens.iter().map(|t| corpus.pos.name(t.pos)).collect(),
            tags: labels
                .iter()
                .map(|&l| self.label_names[l as usize].as_str())
                .collect(),
        };
        // Without POS every token is <unk> by construction: nothing to report.
        let unknown = if corpus.has_pos {
            input.pos_ids.iter().filter(|&&p| p == POS_UNK_ID).count()
        } else {
            0
        };
        let (rows, stats) = self.aligner.rows(&input);
        self.bar.inc(1);
        (rows, stats, unknown)
    }

    fn split(&self, members: &[usize]) -> AlignedSplit<'a> {
        let per_sentence: Vec<_> = members.par_iter().map(|&i| self.sentence(i)).collect();
        let mut out = AlignedSplit {
            rows: Vec::with_capacity(per_sentence.len()),
            info: SplitInfo::default(),
            truncated_words: 0,
            longest_subwords: 0,
        };
        let info = &mut out.info;
        for (rows, stats, unknown) in per_sentence {
            info.sentences += 1;
            info.subwords += stats.subwords;
            info.windows += rows.len();
            info.windowed_sentences += usize::from(rows.len() > 1);
            info.unknown_pos += unknown;
            out.truncated_words += stats.truncated_words;
            out.longest_subwords = out.longest_subwords.max(stats.subwords);
            for row in &rows {
                info.words += (row.label_end - row.label_start) as usize;
                info.tokens += row.input_ids.len();
                info.labelled += row
                    .labels
                    .iter()
                    .filter(|&&l| l != manifest::IGNORE_LABEL)
                    .count();
            }
            out.rows.extend(rows);
        }
        out
    }
}

fn check_options(opts: &PrepareOptions) -> Result<()> {
    if opts.shard_rows == 0 {
        return Err(PrepError::Options("--shard-rows must be at least 1".into()));
    }
    if opts.max_len > u16::MAX as usize * 64 {
        return Err(PrepError::Options(format!(
            "--max-len {} is implausibly large",
            opts.max_len
        )));
    }
    split::parse_fractions(&opts.split.map(|f| f.to_string()).join(","))?;
    Ok(())
}

fn absolute(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_owned())
        .display()
        .to_string()
}

fn check_drop_types(corpus: &Corpus, drop: &[String]) -> Result<()> {
    let types: std::collections::BTreeSet<&str> = corpus
        .tags
        .names()
        .iter()
        .filter_map(|t| tags::parse(t))
        .map(|t| t.ty)
        .filter(|t| !t.is_empty())
        .collect();
    match drop.iter().find(|d| !types.contains(d.as_str())) {
        // A typo would otherwise silently keep the type and change the label set.
        Some(d) => Err(PrepError::Options(format!(
            "--drop-types: the corpus has no entity type {d:?} (its types: {})",
            types.into_iter().collect::<Vec<_>>().join(", ")
        ))),
        None => Ok(()),
    }
}

/// For labels on every sub-word: the label of a word's continuation pieces (I-X for B-X and I-X).
fn continuation_labels(vocab: &[String]) -> Vec<i32> {
    vocab
        .iter()
        .enumerate()
        .map(|(i, l)| match tags::parse(l) {
            Some(t) if t.prefix != tags::Prefix::O => {
                let inside = format!("I-{}", t.ty);
                vocab.iter().position(|v| *v == inside).unwrap_or(i) as i32
            }
            _ => i as i32,
        })
        .collect()
}

/// Encodes a spread-out sample of sentences whole and compares with the per-word assembly; returns
/// how many were checked.
fn check_sample(
    tokenizer: &SubwordTokenizer,
    corpus: &Corpus,
    pieces: &WordPieces,
) -> Result<usize> {
    let step = corpus.sentences.len().div_ceil(CHECKED_SENTENCES).max(1);
    let sample: Vec<Vec<&str>> = corpus
        .sentences
        .iter()
        .step_by(step)
        .map(|s| {
            corpus
                .tokens_of(s)
                .iter()
                .map(|t| corpus.words.name(t.word))
                .collect()
        })
        .collect();
    tokenizer.check_sentences(&sample, |words| {
        let mut ids = tokenizer.prefix.clone();
        for w in words {
            let id = corpus
                .words
                .index_of(w)
                .expect("sample words come from the corpus");
            ids.extend_from_slice(pieces.of(id));
        }
        ids.extend_from_slice(&tokenizer.suffix);
        ids
    })?;
    Ok(sample.len())
}
