//! Where each row of a packed batch lies in its `[N]` tokens: what attention (within rows) and the
//! dropout masks (keyed by the row's sentence and the token's place in it) walk.

/// Row starts of a packed batch (host data).
#[derive(Debug, Clone, PartialEq)]
pub struct RowSpans {
    /// Start of each row, and the total at the end: `[B+1]`.
    pub starts: Vec<usize>,
}

impl RowSpans {
    pub fn new(lengths: Vec<usize>) -> RowSpans {
        let mut starts = Vec::with_capacity(lengths.len() + 1);
        let mut at = 0;
        starts.push(0);
        for l in lengths {
            at += l;
            starts.push(at);
        }
        RowSpans { starts }
    }

    pub fn rows(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn tokens(&self) -> usize {
        *self.starts.last().unwrap_or(&0)
    }

    pub fn len(&self, r: usize) -> usize {
        self.starts[r + 1] - self.starts[r]
    }

    pub fn is_empty(&self) -> bool {
        self.tokens() == 0
    }

    pub fn longest(&self) -> usize {
        (0..self.rows()).map(|r| self.len(r)).max().unwrap_or(0)
    }

    /// Each row's length.
    pub fn lengths(&self) -> Vec<usize> {
        (0..self.rows()).map(|r| self.len(r)).collect()
    }
}
