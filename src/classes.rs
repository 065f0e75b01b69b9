//! Class lists: what the user asks to find. A class has one or more names (synonyms); its
//! score at a pixel is the best of its names'. Class 0 is the background where thresholds apply.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

/// Labels are written as 8-bit PNG indices.
pub const MAX_CLASSES: usize = 256;

/// Names (classes and their synonyms together) per run. Every name adds its logits to every
/// window of every image in flight and to the bands of canvas rows post-processing reads, and
/// its share of the time: measured with the fixture model on 160 x 120 images, 1024 names take
/// 0.15 GB of RSS and 0.8 s an image, where the time and memory of a long list would otherwise
/// grow without bound.
pub const MAX_NAMES: usize = 1024;

/// Editors on Windows start UTF-8 files with it (and `paste` or `$(cat ...)` carry it into
/// `--classes`); it is no part of a name.
const BYTE_ORDER_MARK: char = '\u{feff}';

/// A class file holds at most [`MAX_NAMES`] names; a file far longer than that can hold is not
/// one (`/dev/zero`, a file given by mistake) and is refused before it fills memory.
const MAX_CLASS_FILE_BYTES: u64 = 16 << 20;

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
        let cannot_read = || format!("cannot read class file {}", path.display());
        let mut text = String::new();
        // A plain open: `--classes-file <(command)` is a pipe, and must be waited for.
        std::fs::File::open(path)
            .and_then(|file| {
                file.take(MAX_CLASS_FILE_BYTES + 1)
                    .read_to_string(&mut text)
            })
            .with_context(cannot_read)?;
        if text.len() as u64 > MAX_CLASS_FILE_BYTES {
            return Err(anyhow::anyhow!(
                "it is longer than {} MiB, far more than {MAX_NAMES} names need; is it the class file?",
                MAX_CLASS_FILE_BYTES >> 20
            ))
            .with_context(cannot_read);
        }
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
        let names = classes.iter().map(Vec::len).sum();
        if names > MAX_NAMES {
            return Err(ClassListError::TooManyNames { count: names });
        }
        // Two names CLIP reads alike get equal queries: the later one could never win a
        // pixel, and its class would be silently empty.
        let mut seen = HashMap::new();
        for name in classes.iter().flatten() {
            if let Some(first) = seen.insert(as_clip_reads(name), name) {
                return Err(ClassListError::DuplicateName {
                    first: first.clone(),
                    second: name.clone(),
                });
            }
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
    /// More names, synonyms included, than [`MAX_NAMES`].
    TooManyNames {
        count: usize,
    },
    /// A name given twice, as a class or a synonym: the same, or the same once CLIP's
    /// tokenizer has ignored case and repeated spaces (both spellings, in order).
    DuplicateName {
        first: String,
        second: String,
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
            ClassListError::TooManyNames { count } => write!(
                f,
                "{count} names given (classes and synonyms together), over the limit of \
                 {MAX_NAMES} per run; drop synonyms or split the list over several runs"
            ),
            ClassListError::DuplicateName { first, second } if first == second => write!(
                f,
                "{first:?} is named twice; give each name once, as one class or one synonym"
            ),
            ClassListError::DuplicateName { first, second } => write!(
                f,
                "{first:?} and {second:?} are one name to CLIP, which ignores case and repeated \
                 spaces; give each name once, as one class or one synonym"
            ),
        }
    }
}

impl std::error::Error for ClassListError {}

/// A name as CLIP's tokenizer normalises it before reading it: lowercase, every run of
/// whitespace one space.
fn as_clip_reads(name: &str) -> String {
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn split_names(class: &str, separator: char) -> Result<Vec<String>, ClassListError> {
    let names: Vec<String> = class
        .split(separator)
        .map(|n| {
            n.trim_matches(|c: char| c.is_whitespace() || c == BYTE_ORDER_MARK)
                .to_string()
        })
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

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_name() {
        let list = ClassList::parse_file_contents("\u{feff}sky\r\ntree, bush\r\n").unwrap();
        assert_eq!(list.queries().0, ["sky", "tree", "bush"]);
        // However it got there (two in a file, one carried into --classes), it is no part of a name.
        let list = ClassList::parse_file_contents("\u{feff}\u{feff}sky\n\u{feff}tree\n").unwrap();
        assert_eq!(list.queries().0, ["sky", "tree"]);
        let list = ClassList::parse_inline("\u{feff}sky,person").unwrap();
        assert_eq!(list.queries().0, ["sky", "person"]);
    }

    #[test]
    fn a_name_given_twice_is_refused_after_trimming() {
        let duplicate = |name: &str| {
            Err(ClassListError::DuplicateName {
                first: name.to_string(),
                second: name.to_string(),
            })
        };
        assert_eq!(
            ClassList::parse_inline("person,person"),
            duplicate("person")
        );
        assert_eq!(
            ClassList::parse_inline("person, car | person"),
            duplicate("person")
        );
        assert_eq!(ClassList::parse_inline("car|auto|car"), duplicate("car"));
        let error = ClassList::parse_file_contents("sky\ndog, puppy\n  puppy  # again\n")
            .unwrap_err()
            .downcast::<ClassListError>()
            .unwrap();
        assert_eq!(Err(error), duplicate("puppy"));
        // CLIP's tokenizer ignores case and repeated spaces, so these are one name too.
        for (list, first, second) in [
            ("Person,person", "Person", "person"),
            ("dog,big dog|big  Dog", "big dog", "big  Dog"),
        ] {
            let error = ClassList::parse_inline(list).unwrap_err();
            assert_eq!(
                error,
                ClassListError::DuplicateName {
                    first: first.to_string(),
                    second: second.to_string()
                }
            );
            assert!(error.to_string().contains("one name to CLIP"), "{error}");
        }
        assert!(ClassList::parse_inline("big dog,bigdog,dogs").is_ok());
    }

    #[test]
    fn names_are_capped_synonyms_included() {
        let names = |count: usize| (0..count).map(|i| format!("n{i}")).collect::<Vec<_>>();
        let one_class = |count| names(count).join("|");
        assert_eq!(
            ClassList::parse_inline(&one_class(MAX_NAMES))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            ClassList::parse_inline(&one_class(MAX_NAMES + 1)),
            Err(ClassListError::TooManyNames {
                count: MAX_NAMES + 1
            })
        );
        let line = names(4000).join(",");
        let error = ClassList::parse_file_contents(&line).unwrap_err();
        assert_eq!(
            error.downcast_ref::<ClassListError>(),
            Some(&ClassListError::TooManyNames { count: 4000 })
        );
        assert!(
            format!("{error:#}").contains(&format!("limit of {MAX_NAMES} per run")),
            "{error:#}"
        );
    }
}
