//! Validation problems, collected all at once.

use std::fmt;

/// One problem in a topology: where it is and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Where in the file, e.g. `stages[1] "enrich".input`.
    pub at: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Every problem found so far. Validation never stops at the first one, so a user fixes a
/// topology in one pass.
#[derive(Debug, Default)]
pub struct Issues(Vec<Issue>);

impl Issues {
    /// No problems yet.
    pub fn new() -> Self {
        Issues::default()
    }

    /// Records that the setting at `at` is wrong, and how to fix it.
    pub fn push(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            at: at.into(),
            message: message.into(),
        });
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in the order they were found.
    pub fn into_vec(self) -> Vec<Issue> {
        self.0
    }
}
