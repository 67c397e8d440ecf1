//! Raw text → words, split as the training corpora split them (GMB / CoNLL / Penn Treebank style),
//! each word with its character span in the input line.
//!
//! The rules, applied to each whitespace-separated chunk of the line:
//! 1. Opening punctuation is split off the front: `"` `(` `[` `{` `` ` `` `$` `#` `“` `‘` `«` `£` `€`,
//!    and `'` when another `'` or a letter follows (an opening quote; `'80s` keeps its apostrophe).
//! 2. Closing punctuation is split off the end: `,` `;` `:` `!` `?` `"` `)` `]` `}` `%` `”` `’` `»`,
//!    `'` (a closing quote, or the possessive of a plural: `Workers'` → `Workers` `'`), and `...`.
//! 3. A final `.` is split off unless the chunk is an abbreviation: it has another `.` inside
//!    (`U.S.`, `p.m.`), is one letter (`J.`) not ending the line, or is a known title or short form
//!    (`Mr.`, `Corp.`, `Jan.`, ...; [`ABBREVIATIONS`]). GMB keeps a sentence-final abbreviation whole
//!    (`... the U.S.`).
//! 4. Clitics are split off the end of a word: `'s` `'re` `'ve` `'ll` `'m` `'d` (`Iraq's` → `Iraq`
//!    `'s`) and `n't` (`don't` → `do` `n't`, `can't` → `ca` `n't`); `’` counts as `'`.
//! 5. `--` splits a chunk (`war--and` → `war` `--` `and`); hyphens, apostrophes and dots inside a
//!    word stay (`al-Qaida`, `Shi'ite`, `1,000`, `1.5`).
//!
//! Spans are in characters (Unicode scalar values, as Python indexes a `str`), end exclusive.

use std::ops::Range;

/// A word of a line: its text and where it is in the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    /// Characters `[start, end)` of the line.
    pub span: Range<usize>,
}

/// Titles and short forms that end in `.` and keep it (rule 3), compared case-insensitively.
// Not the short forms that are also words ending a sentence: `no`, `sun`, `sat`, `wed`, `mar`.
pub const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "gen", "lt", "col", "sgt", "capt", "cmdr",
    "adm", "maj", "rep", "sen", "gov", "pres", "rev", "hon", "corp", "inc", "co", "ltd", "bros",
    "dept", "univ", "assn", "mt", "ft", "ave", "blvd", "vs", "etc", "jan", "feb", "apr", "jun",
    "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "thu", "fri", "approx",
];

const OPENING: &[char] = &['"', '(', '[', '{', '`', '$', '#', '“', '‘', '«', '£', '€'];
const CLOSING: &[char] = &[',', ';', ':', '!', '?', '"', ')', ']', '}', '%', '”', '»'];
const CLITICS: &[&str] = &["'s", "'re", "'ve", "'ll", "'m", "'d"];

/// Splits `line` into words (the rules above). Characters `skip` says are not text (the control
/// characters a sub-word tokenizer deletes) are left out of the words but kept in the spans.
pub fn split_words(line: &str, skip: impl Fn(char) -> bool) -> Vec<Word> {
    let chars: Vec<char> = line.chars().collect();
    let mut words = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() {
            i += 1;
        }
        split_chunk(&chars, start..i, &mut words);
    }
    for w in &mut words {
        w.text = chars[w.span.clone()]
            .iter()
            .filter(|&&c| !skip(c))
            .collect();
    }
    words.retain(|w| !w.text.is_empty());
    words
}

/// Splits one whitespace-free chunk `chars[span]` into words, appending them to `out`.
fn split_chunk(chars: &[char], span: Range<usize>, out: &mut Vec<Word>) {
    let (mut a, mut b) = (span.start, span.end);
    // Rule 5 first: each side of a `--` is a chunk of its own.
    if let Some(k) = (a..b.saturating_sub(1)).find(|&k| chars[k] == '-' && chars[k + 1] == '-') {
        let mut end = k + 2;
        while end < b && chars[end] == '-' {
            end += 1;
        }
        split_chunk(chars, a..k, out);
        out.push(word(k..end));
        split_chunk(chars, end..b, out);
        return;
    }
    while a < b && opens(chars, a, b) {
        out.push(word(a..a + 1));
        a += 1;
    }
    let mut tail = Vec::new();
    let line_end = chars[span.end..].iter().all(|c| c.is_whitespace());
    while a < b {
        let n = closing_len(&chars[a..b], line_end);
        if n == 0 {
            break;
        }
        tail.push(word(b - n..b));
        b -= n;
    }
    if a < b {
        let text: String = chars[a..b].iter().collect();
        let core_end = a + core_len(&text);
        out.push(word(a..core_end));
        if core_end < b {
            out.push(word(core_end..b));
        }
    }
    out.extend(tail.into_iter().rev());
}

fn word(span: Range<usize>) -> Word {
    Word {
        text: String::new(),
        span,
    }
}

/// Whether `chars[a]` is opening punctuation of the chunk `chars[a..b]` (rule 1).
fn opens(chars: &[char], a: usize, b: usize) -> bool {
    let c = chars[a];
    if b - a < 2 {
        return false;
    }
    match c {
        '\'' => {
            let next = chars[a + 1];
            next == '\'' || (next.is_alphabetic() && !is_clitic_start(&chars[a..b]))
        }
        _ => OPENING.contains(&c),
    }
}

/// Whether the chunk is a bare clitic (`'s` on its own keeps its apostrophe).
fn is_clitic_start(chunk: &[char]) -> bool {
    let s: String = chunk.iter().collect::<String>().to_lowercase();
    CLITICS.contains(&s.as_str())
}

/// How many characters of closing punctuation end `chunk` (rules 2 and 3), 0 if none.
fn closing_len(chunk: &[char], line_end: bool) -> usize {
    let n = chunk.len();
    if n < 2 {
        return 0;
    }
    let last = chunk[n - 1];
    if chunk.iter().all(|&c| c == '.') {
        return 0;
    }
    if n > 3 && chunk[n - 3..].iter().all(|&c| c == '.') {
        return 3;
    }
    if CLOSING.contains(&last) {
        return 1;
    }
    if last == '\'' || last == '’' {
        // A closing quote, or a plural's possessive (`Workers'`); not `o'` inside a name.
        return 1;
    }
    if last == '.' && !is_abbreviation(&chunk[..n - 1], line_end) {
        return 1;
    }
    0
}

/// Whether `stem` followed by `.` is an abbreviation (rule 3). `line_end`: the chunk ends the line,
/// where a one-letter word with a full stop ends a sentence (`World War I.`) rather than an initial.
fn is_abbreviation(stem: &[char], line_end: bool) -> bool {
    if stem.last() == Some(&'.') {
        // `week..`: stops, not an abbreviation.
        return false;
    }
    if stem.contains(&'.') {
        return stem.iter().any(|c| c.is_alphabetic());
    }
    if stem.len() == 1 && stem[0].is_alphabetic() {
        return !line_end;
    }
    let s: String = stem.iter().collect::<String>().to_lowercase();
    ABBREVIATIONS.contains(&s.as_str())
}

/// The length of `text` without its clitic (rule 4), in characters.
fn core_len(text: &str) -> usize {
    let n = text.chars().count();
    let norm: String = text.replace('’', "'").to_lowercase();
    let chars: Vec<char> = norm.chars().collect();
    let letters_before = |k: usize| k > 0 && chars[k - 1].is_alphabetic();
    if n > 3 && norm.ends_with("n't") && letters_before(n - 3) {
        return n - 3;
    }
    // `'s` after a word or an abbreviation (`A.U.'s`), a number (`1990's`).
    let word_before = |k: usize| k > 0 && (chars[k - 1].is_alphanumeric() || chars[k - 1] == '.');
    for c in CLITICS {
        let k = c.chars().count();
        if n > k && norm.ends_with(c) && word_before(n - k) {
            return n - k;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Vec<(String, usize, usize)> {
        split_words(line, |c| c.is_control())
            .into_iter()
            .map(|w| (w.text, w.span.start, w.span.end))
            .collect()
    }

    fn texts(line: &str) -> Vec<String> {
        split(line).into_iter().map(|w| w.0).collect()
    }

    #[test]
    fn punctuation_and_clitics_split_as_in_gmb() {
        let cases: &[(&str, &[&str])] = &[
            (
                "Peter Blackburn visited Paris.",
                &["Peter", "Blackburn", "visited", "Paris", "."],
            ),
            (
                "Iraq's president said, \"We won't go.\"",
                &[
                    "Iraq",
                    "'s",
                    "president",
                    "said",
                    ",",
                    "\"",
                    "We",
                    "wo",
                    "n't",
                    "go",
                    ".",
                    "\"",
                ],
            ),
            (
                "Mr. Smith met U.S. officials in Washington, D.C.",
                &[
                    "Mr.",
                    "Smith",
                    "met",
                    "U.S.",
                    "officials",
                    "in",
                    "Washington",
                    ",",
                    "D.C.",
                ],
            ),
            (
                "The Workers' Party (PT) won 10% of $1,000.5 in al-Qaida's Shi'ite areas...",
                &[
                    "The", "Workers", "'", "Party", "(", "PT", ")", "won", "10", "%", "of", "$",
                    "1,000.5", "in", "al-Qaida", "'s", "Shi'ite", "areas", "...",
                ],
            ),
            (
                "I'm sure they'll say 'no'--can't they?",
                &[
                    "I", "'m", "sure", "they", "'ll", "say", "'", "no", "'", "--", "ca", "n't",
                    "they", "?",
                ],
            ),
            ("It’s O'Connor’s.", &["It", "’s", "O'Connor", "’s", "."]),
            ("the A.U.'s mission", &["the", "A.U.", "'s", "mission"]),
            (
                "John F. Kennedy said no.",
                &["John", "F.", "Kennedy", "said", "no", "."],
            ),
            ("after World War I.", &["after", "World", "War", "I", "."]),
            ("later this week..", &["later", "this", "week", ".", "."]),
            ("'s", &["'s"]),
            ("Wait ... what?", &["Wait", "...", "what", "?"]),
            ("", &[]),
        ];
        for (line, want) in cases {
            assert_eq!(texts(line), *want, "{line:?}");
        }
    }

    #[test]
    fn spans_are_characters_of_the_line() {
        let line = "  Zoë visited Zürich’s\tmuseum, 10 km.  ";
        let words = split(line);
        let chars: Vec<char> = line.chars().collect();
        for (text, a, b) in &words {
            assert_eq!(chars[*a..*b].iter().collect::<String>(), *text);
        }
        assert_eq!(words[0], ("Zoë".into(), 2, 5));
        assert_eq!(words[3], ("’s".into(), 20, 22));
        assert_eq!(words.last().cloned().unwrap(), (".".into(), 36, 37));
    }

    #[test]
    fn skipped_characters_stay_in_the_span_only() {
        let words = split("ab\u{1}c d");
        assert_eq!(words[0], ("abc".into(), 0, 4));
        // A chunk of skipped characters only is no word.
        assert_eq!(texts("a \u{1} b"), ["a", "b"]);
    }
}
