//! How seqeval reads a tag, in its two modes.
//!
//! Default mode (seqeval's `get_entities`, conlleval-compatible): the first character is the chunk tag
//! and the type is what follows the first `-` of the rest (`B-PER` → `B`, `PER`); an empty type is
//! `_`. Any tag is accepted (seqeval only warns about tags that do not look like NE tags).
//!
//! Strict mode (`seqeval.scheme`): the first character must be one of `IOBESUL` and the type is the
//! rest with `-` stripped from both ends; the scheme decides which prefixes are allowed.

/// A tag as default mode sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultTag {
    /// The chunk tag character (`B`, `I`, `E`, `S`, `O`, or anything else the user wrote).
    pub tag: char,
    /// Index into the scorer's types.
    pub ty: u32,
}

/// The type part of a tag in default mode (`None` means seqeval's `_`).
pub fn default_type(tag: &str) -> &str {
    let mut chars = tag.chars();
    chars.next();
    let rest = chars.as_str();
    let ty = match rest.split_once('-') {
        Some((_, after)) => after,
        None => rest,
    };
    if ty.is_empty() { "_" } else { ty }
}

/// Whether seqeval would warn that a tag "seems not to be NE tag".
pub fn looks_like_ne_tag(tag: &str) -> bool {
    matches!(tag, "O" | "B" | "I" | "E" | "S")
        || ["B-", "I-", "E-", "S-"].iter().any(|p| tag.starts_with(p))
}

/// Chunk prefixes of `seqeval.scheme`, as bits so that pattern tables can hold sets of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix(u8);

impl Prefix {
    pub const I: Prefix = Prefix(1);
    pub const O: Prefix = Prefix(2);
    pub const B: Prefix = Prefix(4);
    pub const E: Prefix = Prefix(8);
    pub const S: Prefix = Prefix(16);
    pub const U: Prefix = Prefix(32);
    pub const L: Prefix = Prefix(64);
    pub const ANY: Prefix = Prefix(127);

    pub fn from_char(c: char) -> Option<Prefix> {
        Some(match c {
            'I' => Prefix::I,
            'O' => Prefix::O,
            'B' => Prefix::B,
            'E' => Prefix::E,
            'S' => Prefix::S,
            'U' => Prefix::U,
            'L' => Prefix::L,
            _ => return None,
        })
    }

    pub const fn or(self, other: Prefix) -> Prefix {
        Prefix(self.0 | other.0)
    }

    pub fn within(self, set: Prefix) -> bool {
        self.0 & set.0 == self.0
    }

    pub fn bits(self) -> u8 {
        self.0
    }
}

/// A tag as strict mode sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrictTag {
    pub prefix: Prefix,
    /// Index into the scorer's types.
    pub ty: u32,
}

/// The type part of a tag in strict mode: the rest after the prefix character, `-` stripped.
pub fn strict_type(tag: &str) -> &str {
    let mut chars = tag.chars();
    chars.next();
    let ty = chars.as_str().trim_matches('-');
    if ty.is_empty() { "_" } else { ty }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_types_follow_seqeval() {
        assert_eq!(default_type("B-PER"), "PER");
        assert_eq!(default_type("O"), "_");
        assert_eq!(default_type("B"), "_");
        assert_eq!(default_type("BPER"), "PER");
        assert_eq!(default_type("B-PER-X"), "PER-X");
        assert_eq!(default_type("B--X"), "-X");
    }

    #[test]
    fn strict_types_strip_dashes() {
        assert_eq!(strict_type("B-PER"), "PER");
        assert_eq!(strict_type("B--X-"), "X");
        assert_eq!(strict_type("O"), "_");
    }

    #[test]
    fn prefix_sets() {
        let iob = Prefix::I.or(Prefix::O).or(Prefix::B);
        assert!(Prefix::B.within(iob));
        assert!(!Prefix::S.within(iob));
        assert!(Prefix::S.within(Prefix::ANY));
    }
}
