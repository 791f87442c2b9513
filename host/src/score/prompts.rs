//! The prompt templates of the paper's Appendix D and the state prompts of SPEC §3.

/// The 27 templates; `{}` is where the state prompt `S(c)` goes.
pub const TEMPLATES: [&str; 27] = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a photo of a dark {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
];

/// The two states of a concept: `S_n(c) = "flawless [c]"`, `S_a(c) = "damaged [c]"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Normal,
    Anomalous,
}

impl State {
    pub fn word(self) -> &'static str {
        match self {
            State::Normal => "flawless",
            State::Anomalous => "damaged",
        }
    }

    /// `template` filled with this state of `token` (a placeholder or a plain word).
    pub fn prompt(self, template: &str, token: &str) -> String {
        template.replace("{}", &format!("{} {token}", self.word()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn templates_and_states() {
        assert_eq!(TEMPLATES.len(), 27);
        assert!(TEMPLATES.iter().all(|t| t.matches("{}").count() == 1));
        assert_eq!(
            State::Anomalous.prompt(TEMPLATES[1], "<c_a>"),
            "a rendering of a damaged <c_a>"
        );
    }
}
