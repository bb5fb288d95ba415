//! Directories the agent makes for its files (sockets, a plugin spec file) in shared places
//! such as /run/docker: made when missing, and removed again when the agent stops if still
//! empty, so that a stopped agent leaves no directory of its own behind.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The directories of `dir` and its ancestors that did not exist and were made now, deepest
/// first.
#[derive(Debug, Default)]
pub struct MadeDirs(Vec<PathBuf>);

impl MadeDirs {
    pub fn create(dir: &Path) -> Result<MadeDirs> {
        let missing: Vec<PathBuf> = dir.ancestors().take_while(|d| !d.exists()).map(Path::to_owned).collect();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(MadeDirs(missing))
    }

    /// Removes those that are empty (another program's files keep theirs), deepest first.
    pub fn remove_empty(&self) {
        for dir in &self.0 {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Not empty: neither are its ancestors.
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_was_made_and_is_empty_goes() {
        let base = std::env::temp_dir().join(format!("bpfnet-dirs-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let made = MadeDirs::create(&base.join("a/b")).unwrap();
        assert_eq!(made.0, [base.join("a/b"), base.join("a")]);
        std::fs::write(base.join("a/other"), "").unwrap();
        made.remove_empty();
        assert!(!base.join("a/b").exists() && base.join("a").exists(), "a holds another file");
        std::fs::remove_file(base.join("a/other")).unwrap();
        made.remove_empty();
        assert!(!base.join("a").exists() && base.exists(), "the base existed before");
        assert!(MadeDirs::create(&base).unwrap().0.is_empty());
        std::fs::remove_dir(&base).unwrap();
    }
}
