//! Class lists: what the user asks to find. A class has one or more names (synonyms); its
//! score at a pixel is the best of its names'. Class 0 is the background where thresholds apply.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Labels are written as 8-bit PNG indices.
pub const MAX_CLASSES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassList {
    classes: Vec<Vec<String>>,
}

impl ClassList {
    /// `--classes "person,car|automobile,road"`: commas separate classes, `|` separates a class's names.
    pub fn parse_inline(spec: &str) -> Result<Self> {
        if spec.trim().is_empty() {
            return Self::new(Vec::new()).context("bad --classes");
        }
        let classes = spec
            .split(',')
            .map(|class| split_names(class, '|'))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("bad --classes {spec:?}"))?;
        Self::new(classes).context("bad --classes")
    }

    /// A class file: one class per line, its names separated by commas; `#` starts a comment;
    /// blank lines are ignored.
    pub fn parse_file_contents(text: &str) -> Result<Self> {
        let mut classes = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            classes.push(split_names(content, ',').with_context(|| format!("line {}", index + 1))?);
        }
        Self::new(classes)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read class file {}", path.display()))?;
        Self::parse_file_contents(&text)
            .with_context(|| format!("bad class file {}", path.display()))
    }

    fn new(classes: Vec<Vec<String>>) -> Result<Self> {
        if classes.is_empty() {
            bail!("the class list is empty; name at least one class, e.g. --classes \"dog,boat,water\"");
        }
        if classes.len() > MAX_CLASSES {
            bail!(
                "{} classes given, but label PNGs hold at most {MAX_CLASSES}; split the list",
                classes.len()
            );
        }
        Ok(ClassList { classes })
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The name a class is shown by: its first.
    pub fn display_name(&self, class: usize) -> &str {
        &self.classes[class][0]
    }

    /// Every name of every class, in order, with the class each belongs to.
    pub fn queries(&self) -> (Vec<String>, Vec<usize>) {
        self.classes
            .iter()
            .enumerate()
            .flat_map(|(class, names)| names.iter().map(move |name| (name.clone(), class)))
            .unzip()
    }
}

fn split_names(class: &str, separator: char) -> Result<Vec<String>> {
    let names: Vec<String> = class
        .split(separator)
        .map(|n| n.trim().to_string())
        .collect();
    if names.iter().any(String::is_empty) {
        bail!(
            "empty class name in {:?}; names must not be blank",
            class.trim()
        );
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_classes_with_synonyms() {
        let list = ClassList::parse_inline("person, car|automobile ,road").unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list.display_name(1), "car");
        let (names, owners) = list.queries();
        assert_eq!(names, ["person", "car", "automobile", "road"]);
        assert_eq!(owners, [0, 1, 1, 2]);
    }

    #[test]
    fn class_file_lines_comments_and_blanks() {
        let text = "# background first\nsky, wall,tree\n\n  dog  # a pet\ncat\n";
        let list = ClassList::parse_file_contents(text).unwrap();
        let (names, owners) = list.queries();
        assert_eq!(names, ["sky", "wall", "tree", "dog", "cat"]);
        assert_eq!(owners, [0, 0, 0, 1, 2]);
    }

    #[test]
    fn empty_lists_and_blank_names_are_refused() {
        assert!(format!("{:#}", ClassList::parse_inline(" ").unwrap_err())
            .contains("class list is empty"));
        assert!(
            format!("{:#}", ClassList::parse_inline("dog,,cat").unwrap_err())
                .contains("empty class name")
        );
        assert!(
            format!("{:#}", ClassList::parse_inline("dog|").unwrap_err())
                .contains("empty class name")
        );
        assert!(format!(
            "{:#}",
            ClassList::parse_file_contents("# only\n\n").unwrap_err()
        )
        .contains("class list is empty"));
        let too_many = (0..257)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            format!("{:#}", ClassList::parse_inline(&too_many).unwrap_err())
                .contains("at most 256")
        );
    }
}
