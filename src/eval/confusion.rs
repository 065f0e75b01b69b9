//! Confusion counts and the metrics read from them, as mmseg's IoUMetric computes them (spec
//! section 9): per class the pixels where prediction and truth agree on it, where it is
//! predicted and where it is the truth, over the whole split, skipping the truth's ignore value.

use std::fmt;

/// The truth value of pixels that count for nothing.
pub const IGNORE: u8 = 255;

/// The class a truth PNG's raw value stands for, or `None` for a pixel to ignore. With
/// `reduce_zero_label` (datasets whose 0 means "unlabelled"), 0 is ignored and every other value
/// moves down by one; 255 stays ignored.
pub fn truth_class(raw: u8, reduce_zero_label: bool) -> Option<u8> {
    match (raw, reduce_zero_label) {
        (IGNORE, _) | (0, true) => None,
        (value, true) => Some(value - 1),
        (value, false) => Some(value),
    }
}

/// A truth value that names no class of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TruthOutOfRange {
    /// As stored in the file.
    pub raw: u8,
    pub reduce_zero_label: bool,
    pub classes: usize,
}

impl std::error::Error for TruthOutOfRange {}

impl fmt::Display for TruthOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let classes = self.classes;
        if self.reduce_zero_label {
            write!(
                f,
                "it holds the value {raw}, which names class {class} once reduce_zero_label \
                 shifts it down by one, but there are {classes} classes (values 1 to {classes}, \
                 with 0 and 255 for pixels to ignore); is it this dataset's truth, or the \
                 classes' list?",
                raw = self.raw,
                class = self.raw - 1,
            )
        } else {
            write!(
                f,
                "it holds the value {raw}, but there are {classes} classes (values 0 to {last}, \
                 with 255 for pixels to ignore); is it this dataset's truth, or the classes' list?",
                raw = self.raw,
                last = classes - 1,
            )
        }
    }
}

/// One image's counts, sparse: the (truth class, predicted class, pixels) triples with pixels
/// above zero, in increasing (truth, predicted) order. An image holds few of the C x C pairs, so
/// this is what the resumable cache keeps per image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageCounts {
    pub entries: Vec<(u8, u8, u64)>,
}

impl ImageCounts {
    /// Counts the pixels of one image: `truth` holds the raw values of its truth PNG and
    /// `prediction` the predicted labels (below `classes`), both row-major at the image's size.
    pub fn tally(
        truth: &[u8],
        prediction: &[u8],
        classes: usize,
        reduce_zero_label: bool,
    ) -> Result<ImageCounts, TruthOutOfRange> {
        assert_eq!(
            truth.len(),
            prediction.len(),
            "truth and prediction of one size"
        );
        // Dense while counting (at most 256 x 256), sparse once done.
        let mut dense = vec![0u64; classes * classes];
        for (&raw, &predicted) in truth.iter().zip(prediction) {
            let Some(class) = truth_class(raw, reduce_zero_label) else {
                continue;
            };
            debug_assert!(usize::from(predicted) < classes, "a label past the classes");
            if usize::from(class) >= classes {
                return Err(TruthOutOfRange {
                    raw,
                    reduce_zero_label,
                    classes,
                });
            }
            dense[usize::from(class) * classes + usize::from(predicted)] += 1;
        }
        let entries = dense
            .iter()
            .enumerate()
            .filter(|(_, &pixels)| pixels > 0)
            .map(|(pair, &pixels)| ((pair / classes) as u8, (pair % classes) as u8, pixels))
            .collect();
        Ok(ImageCounts { entries })
    }
}

/// The counts of a whole split: per class, exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    intersection: Vec<u64>,
    predicted: Vec<u64>,
    truth: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Confusion {
            intersection: vec![0; classes],
            predicted: vec![0; classes],
            truth: vec![0; classes],
        }
    }

    pub fn classes(&self) -> usize {
        self.truth.len()
    }

    /// Adds one image's counts; their classes must be below [`Confusion::classes`].
    pub fn add(&mut self, counts: &ImageCounts) {
        for &(truth, predicted, pixels) in &counts.entries {
            let (truth, predicted) = (usize::from(truth), usize::from(predicted));
            self.truth[truth] += pixels;
            self.predicted[predicted] += pixels;
            if truth == predicted {
                self.intersection[truth] += pixels;
            }
        }
    }

    pub fn metrics(&self) -> Metrics {
        let ratio = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);
        let classes: Vec<ClassMetrics> = (0..self.classes())
            .map(|class| {
                let intersection = self.intersection[class];
                let union = self.predicted[class] + self.truth[class] - intersection;
                ClassMetrics {
                    iou: ratio(intersection, union),
                    acc: ratio(intersection, self.truth[class]),
                }
            })
            .collect();
        let mean = |values: Vec<f64>| {
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        Metrics {
            miou: mean(classes.iter().filter_map(|class| class.iou).collect()),
            aacc: ratio(self.intersection.iter().sum(), self.truth.iter().sum()),
            macc: mean(classes.iter().filter_map(|class| class.acc).collect()),
            classes,
        }
    }
}

/// Fractions (0 to 1); `None` where the spec's NaN is: nothing to divide by.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// Mean IoU over the classes whose union is not empty.
    pub miou: Option<f64>,
    /// Pixels predicted right over all pixels not ignored.
    pub aacc: Option<f64>,
    /// Mean accuracy over the classes with truth pixels.
    pub macc: Option<f64>,
    pub classes: Vec<ClassMetrics>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassMetrics {
    /// `None` when the class is neither predicted nor true anywhere (left out of the mean).
    pub iou: Option<f64>,
    /// `None` when the class has no truth pixels.
    pub acc: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics_of(images: &[(&[u8], &[u8])], classes: usize, reduce: bool) -> Metrics {
        let mut confusion = Confusion::new(classes);
        for (truth, prediction) in images {
            confusion.add(&ImageCounts::tally(truth, prediction, classes, reduce).unwrap());
        }
        confusion.metrics()
    }

    #[test]
    fn counts_are_sparse_and_ordered() {
        let truth = [2, 0, 0, 255, 2, 1];
        let prediction = [2, 1, 0, 0, 2, 2];
        let counts = ImageCounts::tally(&truth, &prediction, 3, false).unwrap();
        assert_eq!(
            counts.entries,
            [(0, 0, 1), (0, 1, 1), (1, 2, 1), (2, 2, 2)],
            "the ignored pixel is not counted"
        );
    }

    #[test]
    fn ignored_pixels_count_for_nothing_whatever_is_predicted() {
        // Class 1 is predicted only where the truth is 255.
        let truth = [0, 0, 255, 255];
        let prediction = [0, 0, 1, 1];
        let metrics = metrics_of(&[(&truth, &prediction)], 2, false);
        assert_eq!(metrics.classes[0].iou, Some(1.0));
        assert_eq!(metrics.classes[1].iou, None);
        assert_eq!(metrics.miou, Some(1.0));
        assert_eq!(metrics.aacc, Some(1.0));
    }

    #[test]
    fn a_class_absent_from_truth_and_prediction_is_left_out_of_the_means() {
        // Class 0: intersection 2, predicted 2, truth 3 -> IoU 2/3, Acc 2/3.
        // Class 1: intersection 1, predicted 1, truth 1 -> IoU 1, Acc 1.
        // Class 2: predicted once, never true -> IoU 0 (in the mean), no Acc.
        // Class 3: nowhere -> left out of both means.
        let metrics = metrics_of(&[(&[0, 0, 0, 1], &[0, 0, 2, 1])], 4, false);
        let iou: Vec<_> = metrics.classes.iter().map(|class| class.iou).collect();
        let acc: Vec<_> = metrics.classes.iter().map(|class| class.acc).collect();
        assert_eq!(iou, [Some(2.0 / 3.0), Some(1.0), Some(0.0), None]);
        assert_eq!(acc, [Some(2.0 / 3.0), Some(1.0), None, None]);
        assert_eq!(metrics.miou, Some((2.0 / 3.0 + 1.0 + 0.0) / 3.0));
        assert_eq!(
            metrics.macc,
            Some((2.0 / 3.0 + 1.0) / 2.0),
            "over the classes with truth pixels"
        );
        assert_eq!(metrics.aacc, Some(3.0 / 4.0));
    }

    #[test]
    fn counts_add_up_over_images_before_dividing() {
        // Per image the IoUs of class 0 are 1 and 0 (a mean of 1/2); over the split it is 3/4.
        let metrics = metrics_of(&[(&[0, 0, 0], &[0, 0, 0]), (&[0], &[1])], 2, false);
        assert_eq!(metrics.classes[0].iou, Some(3.0 / 4.0));
        assert_eq!(metrics.classes[0].acc, Some(3.0 / 4.0));
        assert_eq!(metrics.classes[1].iou, Some(0.0));
        assert_eq!(metrics.classes[1].acc, None);
    }

    #[test]
    fn reduce_zero_label_ignores_zero_and_shifts_the_rest() {
        assert_eq!(truth_class(0, true), None);
        assert_eq!(truth_class(255, true), None);
        assert_eq!(truth_class(1, true), Some(0));
        assert_eq!(truth_class(254, true), Some(253));
        assert_eq!(truth_class(0, false), Some(0));
        assert_eq!(truth_class(255, false), None);
        // Raw 1 and 2 are classes 0 and 1; raw 0 pixels are ignored whatever is predicted.
        let truth = [1, 2, 0, 0, 255];
        let prediction = [0, 0, 1, 1, 1];
        let metrics = metrics_of(&[(&truth, &prediction)], 2, true);
        assert_eq!(metrics.classes[0].iou, Some(1.0 / 2.0));
        assert_eq!(metrics.classes[1].iou, Some(0.0));
        assert_eq!(metrics.classes[1].acc, Some(0.0));
        assert_eq!(metrics.aacc, Some(1.0 / 2.0));
    }

    #[test]
    fn a_split_of_ignored_pixels_has_no_means() {
        let metrics = metrics_of(&[(&[255, 255], &[0, 1])], 2, false);
        assert_eq!(metrics.miou, None);
        assert_eq!(metrics.aacc, None);
        assert_eq!(metrics.macc, None);
    }

    #[test]
    fn a_value_past_the_classes_is_an_error_with_the_raw_value() {
        let error = ImageCounts::tally(&[0, 3], &[0, 0], 3, false).unwrap_err();
        assert_eq!(error.raw, 3);
        assert!(error.to_string().contains("values 0 to 2"), "{error}");
        // 4 is class 3 after the shift: out of range for 3 classes; 3 (class 2) is fine.
        assert!(ImageCounts::tally(&[3], &[0], 3, true).is_ok());
        let error = ImageCounts::tally(&[4], &[0], 3, true).unwrap_err();
        assert!(
            error.to_string().contains("value 4, which names class 3"),
            "{error}"
        );
    }
}
