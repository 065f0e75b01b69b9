//! Benchmark presets: the class lists and settings SCLIP's authors evaluated each benchmark with.
//! SCLIP trains nothing, so these are its only per-dataset tuning: the class names (background
//! synonyms included), the resize, the softmax's logit scale and the background thresholds. A
//! preset reproduces a benchmark's setup in one flag, and its class file is a starting point for
//! users' own lists.

use anyhow::{anyhow, Result};

use crate::classes::ClassList;
use crate::methods::Method;

/// A method's settings for one benchmark, as far as they map onto sclip's options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    pub short_side: u32,
    pub window: usize,
    pub stride: usize,
    pub logit_scale: f32,
    pub prob_thd: f32,
    pub area_thd: Option<f32>,
    /// PAMR's steps (at dilations 8 and 16 in every published configuration); 0 = off.
    pub pamr_steps: usize,
}

#[derive(Debug)]
pub struct Preset {
    pub name: &'static str,
    /// One line for `sclip presets`: the dataset and what its classes cover.
    pub description: &'static str,
    /// A class file whose line N is the dataset's label N, so label PNGs compare to ground truth.
    pub class_file: &'static str,
    /// SCLIP's configuration, which its paper also evaluates CLIP and MaskCLIP with.
    pub sclip: Tuning,
    pub naclip: Tuning,
    pub clearclip: Tuning,
}

/// SCLIP's windows, without PAMR (wangf3014/SCLIP `clip_segmentor.py` defaults).
const fn sclip(short_side: u32, logit_scale: f32, prob_thd: f32, area_thd: Option<f32>) -> Tuning {
    Tuning {
        short_side,
        window: 224,
        stride: 112,
        logit_scale,
        prob_thd,
        area_thd,
        pamr_steps: 0,
    }
}

/// NACLIP's: SCLIP's windows, logit scale 40 throughout, no area threshold, and PAMR's 10
/// steps on, as `naclip.py` defaults to (its paper's "no post-processing" rows are `--pamr 0`).
const fn naclip(short_side: u32, prob_thd: f32) -> Tuning {
    Tuning {
        short_side,
        window: 224,
        stride: 112,
        logit_scale: 40.0,
        prob_thd,
        area_thd: None,
        pamr_steps: 10,
    }
}

/// ClearCLIP's: logit scale 50 throughout, no area threshold, no PAMR.
const fn clearclip(short_side: u32, window: usize, stride: usize, prob_thd: f32) -> Tuning {
    Tuning {
        short_side,
        window,
        stride,
        logit_scale: 50.0,
        prob_thd,
        area_thd: None,
        pamr_steps: 0,
    }
}

/// Where each method's settings come from: its authors' public configurations,
/// `configs/cfg_<benchmark>.py` in each repository at the commit named. Neither NACLIP nor
/// ClearCLIP publishes a COCO-Stuff 10k configuration: theirs are their COCO-Stuff 164k ones.
pub fn tuning_source(method: Method) -> &'static str {
    match method {
        Method::Sclip | Method::Clip | Method::MaskClip => {
            "wangf3014/SCLIP@b56bd30 configs/cfg_*.py (SCLIP's Table 1 runs CLIP and MaskCLIP in the same pipeline)"
        }
        Method::NaClip => "sinahmr/NACLIP@0cac3a6 configs/cfg_*.py and naclip.py (PAMR 10 steps, dilations 8,16)",
        Method::ClearClip => "mc-lan/ClearCLIP@ad68a40 configs/cfg_*.py and clearclip_segmentor.py",
    }
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "voc21",
        description: "PASCAL VOC 2012, 20 objects + background",
        class_file: include_str!("../assets/presets/voc21.txt"),
        sclip: sclip(336, 65.0, 0.1, Some(0.1)),
        naclip: naclip(336, 0.1),
        clearclip: clearclip(448, 448, 224, 0.5),
    },
    Preset {
        name: "voc20",
        description: "PASCAL VOC 2012, 20 objects",
        class_file: include_str!("../assets/presets/voc20.txt"),
        sclip: sclip(336, 40.0, 0.0, None),
        naclip: naclip(336, 0.0),
        clearclip: clearclip(448, 448, 224, 0.0),
    },
    Preset {
        name: "context60",
        description: "PASCAL Context, 59 classes + background",
        class_file: include_str!("../assets/presets/context60.txt"),
        sclip: sclip(336, 50.0, 0.1, None),
        naclip: naclip(336, 0.1),
        clearclip: clearclip(448, 448, 224, 0.15),
    },
    Preset {
        name: "context59",
        description: "PASCAL Context, 59 classes",
        class_file: include_str!("../assets/presets/context59.txt"),
        sclip: sclip(336, 40.0, 0.0, None),
        naclip: naclip(336, 0.0),
        clearclip: clearclip(448, 448, 224, 0.0),
    },
    Preset {
        name: "coco_object",
        description: "COCO-Object, 80 objects + background",
        class_file: include_str!("../assets/presets/coco_object.txt"),
        sclip: sclip(336, 50.0, 0.1, None),
        naclip: naclip(336, 0.1),
        clearclip: clearclip(448, 448, 224, 0.4),
    },
    Preset {
        name: "coco_stuff164k",
        description: "COCO-Stuff 164k, 80 things + 91 stuff",
        class_file: include_str!("../assets/presets/coco_stuff164k.txt"),
        sclip: sclip(448, 40.0, 0.0, None),
        naclip: naclip(336, 0.0),
        clearclip: clearclip(448, 448, 224, 0.0),
    },
    Preset {
        name: "coco_stuff10k",
        description: "COCO-Stuff 10k, 80 things + 91 stuff",
        class_file: include_str!("../assets/presets/coco_stuff10k.txt"),
        sclip: sclip(336, 40.0, 0.0, None),
        naclip: naclip(336, 0.0),
        clearclip: clearclip(448, 448, 224, 0.0),
    },
    Preset {
        name: "cityscapes",
        description: "Cityscapes, 19 classes",
        class_file: include_str!("../assets/presets/cityscapes.txt"),
        sclip: sclip(560, 40.0, 0.0, None),
        naclip: naclip(560, 0.0),
        clearclip: clearclip(448, 224, 224, 0.0),
    },
    Preset {
        name: "ade20k",
        description: "ADE20K, 150 classes",
        class_file: include_str!("../assets/presets/ade20k.txt"),
        sclip: sclip(336, 40.0, 0.0, None),
        naclip: naclip(336, 0.0),
        clearclip: clearclip(448, 448, 224, 0.0),
    },
];

/// Looks a preset up by name, forgiving case and `-` for `_` since both are easy to mistype.
pub fn find(name: &str) -> Result<&'static Preset> {
    let wanted = name.to_ascii_lowercase().replace('-', "_");
    PRESETS
        .iter()
        .find(|preset| preset.name == wanted)
        .ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|preset| preset.name).collect();
            anyhow!(
                "unknown preset {name:?}; run `sclip presets` to list them ({})",
                names.join(", ")
            )
        })
}

impl Preset {
    /// `method`'s settings for this benchmark.
    pub fn tuning(&self, method: Method) -> &Tuning {
        match method {
            Method::Sclip | Method::Clip | Method::MaskClip => &self.sclip,
            Method::NaClip => &self.naclip,
            Method::ClearClip => &self.clearclip,
        }
    }

    pub fn classes(&self) -> ClassList {
        // The files ship inside the binary and the tests parse every one, so failing is a bug.
        ClassList::parse_file_contents(self.class_file).unwrap_or_else(|err| {
            panic!(
                "the class file of preset {} does not parse: {err:#}",
                self.name
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A class list as its classes' names, rebuilt from `queries()` since `ClassList` hides them.
    fn names_by_class(list: &ClassList) -> Vec<Vec<String>> {
        let mut classes = vec![Vec::new(); list.len()];
        let (names, owners) = list.queries();
        for (name, owner) in names.into_iter().zip(owners) {
            classes[owner].push(name);
        }
        classes
    }

    fn classes_of(name: &str) -> Vec<Vec<String>> {
        names_by_class(&find(name).unwrap().classes())
    }

    #[test]
    fn names_classes_and_settings_match_the_authors_table() {
        // (name, classes, short side, logit scale, prob_thd, area_thd), from the spec's table.
        let table = [
            ("voc21", 21, 336, 65.0, 0.1, Some(0.1)),
            ("voc20", 20, 336, 40.0, 0.0, None),
            ("context60", 60, 336, 50.0, 0.1, None),
            ("context59", 59, 336, 40.0, 0.0, None),
            ("coco_object", 81, 336, 50.0, 0.1, None),
            ("coco_stuff164k", 171, 448, 40.0, 0.0, None),
            ("coco_stuff10k", 171, 336, 40.0, 0.0, None),
            ("cityscapes", 19, 560, 40.0, 0.0, None),
            ("ade20k", 150, 336, 40.0, 0.0, None),
        ];
        assert_eq!(PRESETS.len(), table.len());
        for (preset, &(name, classes, short_side, logit_scale, prob_thd, area_thd)) in
            PRESETS.iter().zip(&table)
        {
            assert_eq!(preset.name, name);
            assert_eq!(preset.classes().len(), classes, "{name}");
            let tuning = preset.tuning(Method::Sclip);
            assert_eq!(tuning.short_side, short_side, "{name}");
            assert_eq!(tuning.logit_scale, logit_scale, "{name}");
            assert_eq!(tuning.prob_thd, prob_thd, "{name}");
            assert_eq!(tuning.area_thd, area_thd, "{name}");
            assert_eq!(
                (tuning.window, tuning.stride, tuning.pamr_steps),
                (224, 112, 0)
            );
            assert!(!preset.description.is_empty(), "{name}");
        }
    }

    #[test]
    fn peers_use_their_authors_configs() {
        // (name, NACLIP short side, prob_thd; ClearCLIP short side, window, stride, prob_thd),
        // from the configs `tuning_source` names.
        let table = [
            ("voc21", 336, 0.1, 448, 448, 224, 0.5),
            ("voc20", 336, 0.0, 448, 448, 224, 0.0),
            ("context60", 336, 0.1, 448, 448, 224, 0.15),
            ("context59", 336, 0.0, 448, 448, 224, 0.0),
            ("coco_object", 336, 0.1, 448, 448, 224, 0.4),
            ("coco_stuff164k", 336, 0.0, 448, 448, 224, 0.0),
            ("coco_stuff10k", 336, 0.0, 448, 448, 224, 0.0),
            ("cityscapes", 560, 0.0, 448, 224, 224, 0.0),
            ("ade20k", 336, 0.0, 448, 448, 224, 0.0),
        ];
        for (name, na_short, na_prob, clear_short, clear_window, clear_stride, clear_prob) in table
        {
            let preset = find(name).unwrap();
            let naclip = preset.tuning(Method::NaClip);
            let expected = (na_short, 224, 112, 40.0, na_prob, None, 10);
            let got = (
                naclip.short_side,
                naclip.window,
                naclip.stride,
                naclip.logit_scale,
                naclip.prob_thd,
                naclip.area_thd,
                naclip.pamr_steps,
            );
            assert_eq!(got, expected, "naclip {name}");
            let clear = preset.tuning(Method::ClearClip);
            let expected = (
                clear_short,
                clear_window,
                clear_stride,
                50.0,
                clear_prob,
                None,
                0,
            );
            let got = (
                clear.short_side,
                clear.window,
                clear.stride,
                clear.logit_scale,
                clear.prob_thd,
                clear.area_thd,
                clear.pamr_steps,
            );
            assert_eq!(got, expected, "clearclip {name}");
            for method in [Method::Clip, Method::MaskClip] {
                assert_eq!(preset.tuning(method), preset.tuning(Method::Sclip));
            }
        }
    }

    #[test]
    fn class_files_open_with_a_header_giving_the_class_count() {
        for preset in PRESETS {
            let first = preset.class_file.lines().next().unwrap();
            assert!(first.starts_with("# "), "{}: {first}", preset.name);
            let count = preset.classes().len().to_string();
            assert!(first.contains(&count), "{}: {first}", preset.name);
        }
    }

    #[test]
    fn names_are_unique_lowercase_words() {
        // Uniqueness also keeps the background's synonyms off the object classes: a name in two
        // classes would make those classes tie wherever it wins.
        for preset in PRESETS {
            let (names, _) = preset.classes().queries();
            let mut seen = std::collections::HashSet::new();
            for name in &names {
                assert!(
                    seen.insert(name.as_str()),
                    "{}: {name:?} twice",
                    preset.name
                );
                let readable = name
                    .split(' ')
                    .all(|word| !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase()));
                assert!(readable, "{}: {name:?}", preset.name);
            }
        }
    }

    #[test]
    fn backgrounds_are_class_0() {
        for name in ["voc21", "coco_object"] {
            let background = &classes_of(name)[0];
            assert!(background.len() >= 10, "{name}: {background:?}");
            assert!(background.iter().any(|n| n == "sky"), "{name}");
        }
        assert_eq!(classes_of("context60")[0], ["background"]);
    }

    #[test]
    fn lists_without_background_are_those_with_it_less_class_0() {
        assert_eq!(classes_of("voc20"), classes_of("voc21")[1..]);
        assert_eq!(classes_of("context59"), classes_of("context60")[1..]);
        assert_eq!(classes_of("coco_stuff10k"), classes_of("coco_stuff164k"));

        // COCO-Object's objects are COCO-Stuff's 80 things, some with added synonyms.
        let object = find("coco_object").unwrap().classes();
        let stuff = find("coco_stuff164k").unwrap().classes();
        for class in 1..object.len() {
            assert_eq!(object.display_name(class), stuff.display_name(class - 1));
        }
    }

    #[test]
    fn person_and_screen_synonyms() {
        for (name, person, screen) in [("voc21", 15, 20), ("voc20", 14, 19), ("coco_object", 1, 63)]
        {
            let classes = classes_of(name);
            assert_eq!(classes[person][0], "person", "{name}");
            assert!(classes[person].len() > 1, "{name}");
            assert!(classes[screen].iter().any(|n| n == "television"), "{name}");
        }
    }

    #[test]
    fn find_forgives_case_and_dashes() {
        assert_eq!(find("VOC21").unwrap().name, "voc21");
        assert_eq!(find("coco-object").unwrap().name, "coco_object");
        assert_eq!(find("Coco-Stuff164K").unwrap().name, "coco_stuff164k");
    }

    #[test]
    fn find_refuses_unknown_names_and_lists_the_known() {
        let message = format!("{:#}", find("voc22").unwrap_err());
        assert!(message.contains("unknown preset \"voc22\""), "{message}");
        assert!(message.contains("sclip presets"), "{message}");
        for preset in PRESETS {
            assert!(message.contains(preset.name), "{message}");
        }
    }
}
