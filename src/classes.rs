//! Class lists: what the user asks to find. A class has one or more names (synonyms); its
//! score at a pixel is the best of its names'. Class 0 is the background where thresholds apply.

use std::path::Path;

use anyhow::{Context, Result};

/// Labels are written as 8-bit PNG indices.
pub const MAX_CLASSES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassList {
    classes: Vec<Vec<String>>,
}

impl ClassList {
    /// One line: `"person,car|automobile,road"`, commas separating classes and `|` a class's names.
    pub fn parse_inline(spec: &str) -> Result<Self, ClassListError> {
        if spec.trim().is_empty() {
            return Self::new(Vec::new());
        }
        let classes = spec
            .split(',')
            .map(|class| split_names(class, '|'))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(classes)
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
        Ok(Self::new(classes)?)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read class file {}", path.display()))?;
        Self::parse_file_contents(&text)
            .with_context(|| format!("bad class file {}", path.display()))
    }

    fn new(classes: Vec<Vec<String>>) -> Result<Self, ClassListError> {
        if classes.is_empty() {
            return Err(ClassListError::Empty);
        }
        if classes.len() > MAX_CLASSES {
            return Err(ClassListError::TooMany {
                count: classes.len(),
            });
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

/// Why a class list cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassListError {
    Empty,
    /// A class (as written) with a blank name.
    BlankName {
        class: String,
    },
    /// More classes than label PNGs can hold.
    TooMany {
        count: usize,
    },
}

impl std::fmt::Display for ClassListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClassListError::Empty => write!(f, "the class list is empty; name at least one class"),
            ClassListError::BlankName { class } => {
                write!(f, "empty class name in {class:?}; names must not be blank")
            }
            ClassListError::TooMany { count } => write!(
                f,
                "{count} classes given, but label PNGs hold at most {MAX_CLASSES}; split the list"
            ),
        }
    }
}

impl std::error::Error for ClassListError {}

fn split_names(class: &str, separator: char) -> Result<Vec<String>, ClassListError> {
    let names: Vec<String> = class
        .split(separator)
        .map(|n| n.trim().to_string())
        .collect();
    if names.iter().any(String::is_empty) {
        return Err(ClassListError::BlankName {
            class: class.trim().to_string(),
        });
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
        assert_eq!(ClassList::parse_inline(" "), Err(ClassListError::Empty));
        assert_eq!(
            ClassList::parse_inline("dog,,cat"),
            Err(ClassListError::BlankName {
                class: String::new()
            })
        );
        assert_eq!(
            ClassList::parse_inline("dog|"),
            Err(ClassListError::BlankName {
                class: "dog|".to_string()
            })
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
        assert_eq!(
            ClassList::parse_inline(&too_many),
            Err(ClassListError::TooMany { count: 257 })
        );
    }
}
