//! JPEG decoding that reproduces OpenCV's `cv2.imdecode(buf, cv2.IMREAD_COLOR)` bit for bit.
//!
//! The reference pipeline decodes with OpenCV, whose JPEG codec is libjpeg-turbo run with the
//! library defaults: accurate integer IDCT, "fancy" (triangle filter) chroma upsampling and
//! libjpeg's own YCbCr->RGB tables. The `image` crate's decoder rounds differently and so lands
//! 1-3 grey levels away on many pixels, which the model downstream amplifies. mozjpeg's decoder
//! is libjpeg-turbo's, so running it with the same settings gives the same bytes.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Read};
use std::os::raw::c_int;
use std::panic::{self, AssertUnwindSafe};

use anyhow::{anyhow, bail, Result};
use image::RgbImage;
use mozjpeg::decompress::DecompressStarted;
use mozjpeg::{ColorSpace, Decompress};
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error, JTRC_SOS, JWRN_JPEG_EOF};

use super::TooManyPixels;

/// Decodes a JPEG to 8-bit RGB exactly as OpenCV's imdecode(IMREAD_COLOR) does before any EXIF
/// rotation (the caller applies the orientation), with the warnings libjpeg gave on the way
/// (damaged data that it decoded anyway, as OpenCV does). Errors say what is wrong with the data
/// (truncated, not a JPEG, ...); a frame of more than `max_pixels` is refused as
/// [`TooManyPixels`] once libjpeg has read the header, before any pixel is decoded.
pub(crate) fn decode_jpeg(bytes: &[u8], max_pixels: u64) -> Result<(RgbImage, Vec<String>)> {
    // imdecode only hands data that starts with this signature to its JPEG decoder; libjpeg itself
    // would accept any FF D8 and skip junk up to the next marker.
    if !bytes.starts_with(&JPEG_SIGNATURE) {
        bail!("not a JPEG file: it does not start with the JPEG signature FF D8 FF");
    }
    let ran_out_of_data = Cell::new(false);
    let source = EndTrackingReader {
        remaining: bytes,
        ran_out_of_data: &ran_out_of_data,
    };
    WARNINGS.with_borrow_mut(Warnings::clear);
    // libjpeg reports fatal errors through `unwind_with_message`, which unwinds out of the C
    // code (without running the panic hook), so that is where they have to be caught. The
    // closure owns all of libjpeg's state, which unwinding drops; only the flag outlives it.
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        decode_with_libjpeg(source, &ran_out_of_data, max_pixels)
    }));
    let warnings = WARNINGS.with_borrow_mut(Warnings::take);
    let decoded = outcome.unwrap_or_else(|payload| Err(anyhow!(panic_message(payload.as_ref()))));
    if !ran_out_of_data.get() {
        return decoded.map(|image| (image, warnings));
    }
    // libjpeg (as mozjpeg's reader sets it up) pads a truncated stream with grey and carries on,
    // but OpenCV's in-memory source suspends at the end of the data, and imdecode then returns no
    // image at all. That includes a file that only lacks its end-of-image marker.
    Err(match decoded {
        Ok(_) => anyhow!("the JPEG data is truncated: it ends before the image is complete"),
        Err(error) => error.context("the JPEG data is truncated"),
    })
}

const JPEG_SIGNATURE: [u8; 3] = [0xFF, 0xD8, 0xFF];

fn decode_with_libjpeg(
    source: EndTrackingReader<'_>,
    ran_out_of_data: &Cell<bool>,
    max_pixels: u64,
) -> Result<RgbImage> {
    // Builds the decoder and runs jpeg_read_header: the size below is the one libjpeg will
    // decode, however the markers before the frame are laid out.
    let header = Decompress::builder()
        .with_err(warning_collecting_error_manager())
        .from_reader(source)?;
    let (width, height) = header.size();
    let pixels = (width as u64).saturating_mul(height as u64);
    if pixels > max_pixels {
        return Err(TooManyPixels {
            width: u32::try_from(width).unwrap_or(u32::MAX),
            height: u32::try_from(height).unwrap_or(u32::MAX),
            limit: max_pixels,
        }
        .into());
    }
    // Like OpenCV: every 4-component JPEG (CMYK, or YCCK with an Adobe marker) is read as CMYK and
    // converted below; everything else goes through libjpeg's own conversion, which also expands
    // greyscale to three equal channels. libjpeg's other defaults (accurate integer IDCT, fancy
    // upsampling, block smoothing of incomplete progressive scans) are what OpenCV uses too.
    let cmyk = header.components().len() == 4;
    let colorspace = if cmyk {
        ColorSpace::JCS_CMYK
    } else {
        ColorSpace::JCS_EXT_RGB
    };
    let mut decoder = header.to_colorspace(colorspace)?;
    let (width, height) = (decoder.width(), decoder.height());
    let rgb = if cmyk {
        let cmyk: Vec<[u8; 4]> = decoder.read_scanlines()?;
        cmyk.into_iter().flat_map(cmyk_to_rgb).collect()
    } else {
        decoder.read_scanlines()?
    };
    let image = rgb_image(width, height, rgb)?;
    finish_like_opencv(decoder, ran_out_of_data);
    Ok(image)
}

/// Like OpenCV, reads on to the end-of-image marker once every row is decoded: that is where
/// libjpeg finds scan data the rows did not use, the trace of flipped bytes, and warns about it.
/// Nothing found there changes the image, and OpenCV ignores how this step ends (an error, or
/// data that stops before the end-of-image marker), so this does too; it stops at that marker,
/// so trailing garbage or a second image after it are never read.
fn finish_like_opencv(
    decoder: DecompressStarted<EndTrackingReader<'_>>,
    ran_out_of_data: &Cell<bool>,
) {
    let truncated_before = ran_out_of_data.get();
    // An error here unwinds out of libjpeg as anywhere else; the decoder is dropped with it.
    let _ignored = panic::catch_unwind(AssertUnwindSafe(|| decoder.finish()));
    ran_out_of_data.set(truncated_before);
}

/// The warnings of the decode running on this thread. libjpeg's callbacks get only its own
/// state, and the mozjpeg wrapper keeps the error manager out of reach, so they land here; a
/// decode runs on one thread from start to end.
struct Warnings {
    kept: Vec<String>,
    /// Past [`MAX_WARNINGS`]: a damaged scan can warn at every restart marker.
    more: usize,
    /// Scans started so far, for [`MAX_SCANS`].
    scans: usize,
}

const MAX_WARNINGS: usize = 4;

/// A progressive JPEG is decoded scan by scan, each over the whole image, so a small file that
/// repeats scans (1000 of them: 46 s for an 8000x8000 image) is a CPU bomb within the pixel
/// limit. Encoders write at most a few dozen (libjpeg's progressive script: 10; mozjpeg's
/// optimised ones: under 70), so past this many the file is refused, as libjpeg-turbo's own tools
/// do with their scan limit; 100 scans of a 100-megapixel image take about 7 s.
pub(crate) const MAX_SCANS: usize = 100;

impl Warnings {
    fn clear(&mut self) {
        self.kept.clear();
        self.more = 0;
        self.scans = 0;
    }

    fn add(&mut self, warning: String) {
        if self.kept.contains(&warning) {
            return;
        }
        if self.kept.len() < MAX_WARNINGS {
            self.kept.push(warning);
        } else {
            self.more += 1;
        }
    }

    fn take(&mut self) -> Vec<String> {
        let mut warnings = std::mem::take(&mut self.kept);
        if self.more > 0 {
            warnings.push(format!("and {} other libjpeg warnings", self.more));
        }
        self.more = 0;
        warnings
    }
}

thread_local! {
    static WARNINGS: RefCell<Warnings> = const {
        RefCell::new(Warnings { kept: Vec::new(), more: 0, scans: 0 })
    };
}

/// libjpeg's standard error manager with two changes: a fatal error unwinds (as the mozjpeg
/// wrapper's own does), and warnings are collected instead of printed to stderr.
fn warning_collecting_error_manager() -> jpeg_error_mgr {
    // SAFETY: jpeg_std_error fills in every field of the zeroed struct.
    let mut manager = unsafe {
        let mut manager: jpeg_error_mgr = std::mem::zeroed();
        jpeg_std_error(&mut manager);
        manager
    };
    manager.error_exit = Some(unwind_with_message);
    manager.emit_message = Some(collect_warning);
    manager
}

/// libjpeg's text for the message it is reporting, such as "Corrupt JPEG data: premature end of
/// data segment".
fn libjpeg_message(cinfo: &mut jpeg_common_struct) -> String {
    // SAFETY: cinfo.err is the error manager libjpeg is calling back through, and its
    // format_message writes at most JMSG_LENGTH_MAX (80) bytes, NUL included, into the buffer.
    // The binding declares the buffer `&[u8; 80]`, but C writes to it, hence the cast to `&mut`.
    unsafe {
        let Some(format_message) = cinfo.err.as_ref().and_then(|err| err.format_message) else {
            return "libjpeg gave no message".to_owned();
        };
        let format_message = std::mem::transmute::<
            unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &[u8; 80]),
            unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &mut [u8; 80]),
        >(format_message);
        let mut buffer = [0u8; 80];
        format_message(cinfo, &mut buffer);
        let text = buffer.split(|&byte| byte == 0).next().unwrap_or_default();
        String::from_utf8_lossy(text).into_owned()
    }
}

extern "C-unwind" fn unwind_with_message(cinfo: &mut jpeg_common_struct) {
    // Caught in decode_jpeg; resume_unwind skips the panic hook, so nothing is printed.
    panic::resume_unwind(Box::new(libjpeg_message(cinfo)));
}

/// libjpeg calls this with level -1 for a warning (data it could not make sense of but went
/// past) and levels 0 and up for trace messages, which stay unseen. "Premature end of JPEG
/// file" is left out too: running out of data is judged by [`EndTrackingReader`] instead (an
/// error before the last row, nothing after it).
extern "C-unwind" fn collect_warning(cinfo: &mut jpeg_common_struct, level: c_int) {
    // SAFETY: cinfo.err is the error manager libjpeg is calling back through.
    let code = unsafe { cinfo.err.as_ref() }.map(|err| err.msg_code);
    // libjpeg traces every start of scan through here, whatever the trace level.
    if code == Some(JTRC_SOS as c_int) {
        let scans = WARNINGS.with_borrow_mut(|warnings| {
            warnings.scans += 1;
            warnings.scans
        });
        if scans > MAX_SCANS {
            // Caught in decode_jpeg, as libjpeg's own fatal errors are.
            panic::resume_unwind(Box::new(format!(
                "the JPEG has more than {MAX_SCANS} scans, more than any encoder writes: a \
                 damaged or hostile file, which would take minutes to decode"
            )));
        }
    }
    if level < 0 && code != Some(JWRN_JPEG_EOF as c_int) {
        let warning = libjpeg_message(cinfo);
        WARNINGS.with_borrow_mut(|warnings| warnings.add(warning));
    }
}

/// OpenCV's `icvCvt_CMYK2BGR_8u_C4C3R`, reordered to RGB. libjpeg hands over the samples as
/// stored, which for Adobe files are inverted (255 = no ink), hence `k * c / 256`, rounded down.
fn cmyk_to_rgb([cyan, magenta, yellow, black]: [u8; 4]) -> [u8; 3] {
    let k = u32::from(black);
    // Never exceeds k, so the result fits a byte.
    let channel = |ink: u8| (k - (((255 - u32::from(ink)) * k) >> 8)) as u8;
    [channel(cyan), channel(magenta), channel(yellow)]
}

fn rgb_image(width: usize, height: usize, rgb: Vec<u8>) -> Result<RgbImage> {
    let too_large = || anyhow!("the JPEG is too large: {width}x{height}");
    let width = u32::try_from(width).map_err(|_| too_large())?;
    let height = u32::try_from(height).map_err(|_| too_large())?;
    RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| anyhow!("libjpeg returned fewer pixels than {width}x{height}"))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("libjpeg failed for an unknown reason")
        .to_owned()
}

/// The whole JPEG as one buffer, noting whether libjpeg ever asked for more data than there is.
/// OpenCV's source manager gives up at exactly that point; mozjpeg's fakes an end-of-image marker.
struct EndTrackingReader<'a> {
    remaining: &'a [u8],
    ran_out_of_data: &'a Cell<bool>,
}

impl Read for EndTrackingReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.fill_buf()?.read(buffer)?;
        self.consume(count);
        Ok(count)
    }
}

impl BufRead for EndTrackingReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.remaining.is_empty() {
            self.ran_out_of_data.set(true);
        }
        Ok(self.remaining)
    }

    fn consume(&mut self, count: usize) {
        self.remaining = &self.remaining[count..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Tiny JPEGs written by Pillow (optimised Huffman tables, JFIF header dropped); the expected
    // pixels come from cv2.imdecode(IMREAD_COLOR) with OpenCV 4.14 (libjpeg-turbo 3.1.2), then BGR->RGB.

    /// 16x16, 4:2:0, quality 75: a colour ramp with a saturated red patch.
    const COLOUR_420: &[u8] = &[
        0xff, 0xd8, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x08, 0x06, 0x06, 0x07, 0x06, 0x05, 0x08, 0x07,
        0x07, 0x07, 0x09, 0x09, 0x08, 0x0a, 0x0c, 0x14, 0x0d, 0x0c, 0x0b, 0x0b, 0x0c, 0x19, 0x12,
        0x13, 0x0f, 0x14, 0x1d, 0x1a, 0x1f, 0x1e, 0x1d, 0x1a, 0x1c, 0x1c, 0x20, 0x24, 0x2e, 0x27,
        0x20, 0x22, 0x2c, 0x23, 0x1c, 0x1c, 0x28, 0x37, 0x29, 0x2c, 0x30, 0x31, 0x34, 0x34, 0x34,
        0x1f, 0x27, 0x39, 0x3d, 0x38, 0x32, 0x3c, 0x2e, 0x33, 0x34, 0x32, 0xff, 0xdb, 0x00, 0x43,
        0x01, 0x09, 0x09, 0x09, 0x0c, 0x0b, 0x0c, 0x18, 0x0d, 0x0d, 0x18, 0x32, 0x21, 0x1c, 0x21,
        0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32,
        0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32,
        0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32,
        0x32, 0x32, 0x32, 0x32, 0x32, 0xff, 0xc0, 0x00, 0x11, 0x08, 0x00, 0x10, 0x00, 0x10, 0x03,
        0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01, 0xff, 0xc4, 0x00, 0x15, 0x00, 0x01,
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x06, 0x07, 0xff, 0xc4, 0x00, 0x21, 0x10, 0x00, 0x02, 0x01, 0x04, 0x00, 0x07, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x05, 0x00, 0x03, 0x04, 0x11,
        0x06, 0x12, 0x32, 0x41, 0x51, 0x71, 0x81, 0xff, 0xc4, 0x00, 0x14, 0x01, 0x01, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0xff,
        0xc4, 0x00, 0x20, 0x11, 0x00, 0x01, 0x03, 0x02, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x11, 0x00, 0x13, 0x04, 0x05, 0x06, 0x21,
        0x31, 0x51, 0x91, 0xff, 0xda, 0x00, 0x0c, 0x03, 0x01, 0x00, 0x02, 0x11, 0x03, 0x11, 0x00,
        0x3f, 0x00, 0x9d, 0xc7, 0xc1, 0x2a, 0x28, 0x67, 0x1a, 0x1e, 0xa9, 0x44, 0x3c, 0x4a, 0x64,
        0x3b, 0x2a, 0x27, 0x46, 0xb7, 0xf6, 0x95, 0x60, 0x70, 0xea, 0xb8, 0x01, 0xed, 0x06, 0x1e,
        0x08, 0xdd, 0x27, 0xc1, 0x80, 0xb1, 0x86, 0x9c, 0xcb, 0x61, 0x14, 0xb7, 0x65, 0x50, 0x0b,
        0x52, 0x4e, 0x26, 0xcc, 0xbc, 0xe2, 0xe1, 0x03, 0x9a, 0x46, 0x41, 0xa8, 0x18, 0x2c, 0x04,
        0x00, 0x6e, 0x77, 0x3b, 0x79, 0x5f, 0xff, 0xd9,
    ];

    /// 8x8 greyscale, quality 75.
    const GREY: &[u8] = &[
        0xff, 0xd8, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x08, 0x06, 0x06, 0x07, 0x06, 0x05, 0x08, 0x07,
        0x07, 0x07, 0x09, 0x09, 0x08, 0x0a, 0x0c, 0x14, 0x0d, 0x0c, 0x0b, 0x0b, 0x0c, 0x19, 0x12,
        0x13, 0x0f, 0x14, 0x1d, 0x1a, 0x1f, 0x1e, 0x1d, 0x1a, 0x1c, 0x1c, 0x20, 0x24, 0x2e, 0x27,
        0x20, 0x22, 0x2c, 0x23, 0x1c, 0x1c, 0x28, 0x37, 0x29, 0x2c, 0x30, 0x31, 0x34, 0x34, 0x34,
        0x1f, 0x27, 0x39, 0x3d, 0x38, 0x32, 0x3c, 0x2e, 0x33, 0x34, 0x32, 0xff, 0xc0, 0x00, 0x0b,
        0x08, 0x00, 0x08, 0x00, 0x08, 0x01, 0x01, 0x11, 0x00, 0xff, 0xc4, 0x00, 0x14, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x06, 0xff, 0xc4, 0x00, 0x21, 0x10, 0x00, 0x01, 0x02, 0x05, 0x05, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x04, 0x03, 0x05, 0x06, 0x11, 0x21,
        0x12, 0x13, 0x22, 0x31, 0x42, 0x51, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3f,
        0x00, 0x25, 0x4a, 0xc2, 0xa7, 0xd3, 0x48, 0xb9, 0x6c, 0xe2, 0x5e, 0xe1, 0x73, 0xe5, 0x47,
        0x0a, 0x6e, 0xe8, 0x28, 0xed, 0xa2, 0x1f, 0x0c, 0x11, 0xaa, 0xd7, 0xc2, 0xfc, 0x9e, 0xc6,
        0x7e, 0x7f, 0xff, 0xd9,
    ];

    /// 8x8 Adobe CMYK (inverted samples), quality 75, as Pillow writes CMYK.
    const CMYK: &[u8] = &[
        0xff, 0xd8, 0xff, 0xee, 0x00, 0x0e, 0x41, 0x64, 0x6f, 0x62, 0x65, 0x00, 0x64, 0x00, 0x00,
        0x00, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x08, 0x06, 0x06, 0x07, 0x06, 0x05, 0x08,
        0x07, 0x07, 0x07, 0x09, 0x09, 0x08, 0x0a, 0x0c, 0x14, 0x0d, 0x0c, 0x0b, 0x0b, 0x0c, 0x19,
        0x12, 0x13, 0x0f, 0x14, 0x1d, 0x1a, 0x1f, 0x1e, 0x1d, 0x1a, 0x1c, 0x1c, 0x20, 0x24, 0x2e,
        0x27, 0x20, 0x22, 0x2c, 0x23, 0x1c, 0x1c, 0x28, 0x37, 0x29, 0x2c, 0x30, 0x31, 0x34, 0x34,
        0x34, 0x1f, 0x27, 0x39, 0x3d, 0x38, 0x32, 0x3c, 0x2e, 0x33, 0x34, 0x32, 0xff, 0xc0, 0x00,
        0x14, 0x08, 0x00, 0x08, 0x00, 0x08, 0x04, 0x43, 0x11, 0x00, 0x4d, 0x11, 0x00, 0x59, 0x11,
        0x00, 0x4b, 0x11, 0x00, 0xff, 0xc4, 0x00, 0x15, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x07, 0xff, 0xc4, 0x00,
        0x24, 0x10, 0x00, 0x00, 0x05, 0x03, 0x03, 0x05, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x11, 0x12, 0x00, 0x04, 0x05, 0x13, 0x41, 0xc1, 0x06,
        0x07, 0x14, 0x15, 0x51, 0x52, 0xff, 0xda, 0x00, 0x0e, 0x04, 0x43, 0x00, 0x4d, 0x00, 0x59,
        0x00, 0x4b, 0x00, 0x00, 0x3f, 0x00, 0x1d, 0xda, 0xdc, 0x1f, 0xbf, 0xbd, 0x3d, 0xb7, 0x91,
        0xa1, 0xa4, 0x80, 0xab, 0x28, 0x49, 0xd8, 0xc5, 0x06, 0x67, 0x0f, 0xd5, 0x4b, 0x32, 0x1d,
        0x3a, 0x9e, 0x3a, 0xdc, 0xab, 0x28, 0x93, 0x80, 0x9a, 0x3f, 0x36, 0x11, 0xe2, 0x88, 0xa6,
        0x81, 0x71, 0x76, 0x84, 0x5c, 0xc8, 0xcc, 0x04, 0xc0, 0x56, 0x76, 0xd8, 0x47, 0x8a, 0xbf,
        0xd7, 0xff, 0xd9,
    ];

    fn decode(bytes: &[u8]) -> Result<RgbImage> {
        decode_jpeg(bytes, u64::MAX).map(|(image, _)| image)
    }

    /// Sum of (index + 1) * byte over the whole RGB buffer: a one-level change anywhere shows.
    fn position_weighted_sum(image: &RgbImage) -> u64 {
        (1..)
            .zip(image.as_raw())
            .map(|(weight, &byte)| weight * u64::from(byte))
            .sum()
    }

    fn pixel(image: &RgbImage, x: u32, y: u32) -> [u8; 3] {
        image.get_pixel(x, y).0
    }

    #[test]
    fn a_jpeg_with_more_scans_than_any_encoder_writes_is_refused() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/images/progressive.jpg"
        );
        let progressive = std::fs::read(path).unwrap();
        assert!(decode(&progressive).is_ok());
        let last_scan = progressive
            .windows(2)
            .rposition(|pair| pair == [0xFF, 0xDA])
            .unwrap();
        let end = progressive.len() - 2;
        let mut repeated = progressive[..end].to_vec();
        for _ in 0..MAX_SCANS {
            repeated.extend_from_slice(&progressive[last_scan..end]);
        }
        repeated.extend_from_slice(&[0xFF, 0xD9]);
        let error = decode(&repeated).unwrap_err();
        assert!(
            format!("{error:#}").contains("more than 100 scans"),
            "{error:#}"
        );
    }

    #[test]
    fn decodes_420_colour_like_opencv() {
        let image = decode(COLOUR_420).unwrap();
        assert_eq!(image.dimensions(), (16, 16));
        // The first three are pixels where the image crate's decoder is off by 1-2 levels.
        assert_eq!(pixel(&image, 3, 1), [48, 18, 72]);
        assert_eq!(pixel(&image, 11, 1), [185, 12, 153]);
        assert_eq!(pixel(&image, 12, 1), [196, 7, 151]);
        assert_eq!(pixel(&image, 8, 6), [239, 18, 61]);
        assert_eq!(pixel(&image, 15, 15), [239, 244, 30]);
        assert_eq!(position_weighted_sum(&image), 43_662_790);
    }

    #[test]
    fn decodes_greyscale_to_three_equal_channels_like_opencv() {
        let image = decode(GREY).unwrap();
        let expected: [[u8; 8]; 8] = [
            [2, 17, 20, 49, 47, 54, 52, 80],
            [5, 16, 17, 29, 45, 64, 75, 93],
            [10, 20, 34, 255, 253, 244, 79, 71],
            [9, 29, 47, 248, 247, 248, 102, 94],
            [34, 28, 16, 255, 247, 248, 75, 91],
            [14, 38, 58, 53, 75, 82, 99, 106],
            [35, 43, 45, 58, 73, 83, 90, 107],
            [32, 49, 56, 67, 82, 95, 100, 112],
        ];
        let decoded: Vec<[u8; 8]> = (0..8)
            .map(|y| std::array::from_fn(|x| pixel(&image, x as u32, y)[0]))
            .collect();
        assert_eq!(decoded, expected);
        assert!(image.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    }

    #[test]
    fn converts_adobe_cmyk_like_opencv() {
        let image = decode(CMYK).unwrap();
        assert_eq!(image.dimensions(), (8, 8));
        assert_eq!(pixel(&image, 0, 0), [1, 1, 36]);
        assert_eq!(pixel(&image, 1, 0), [17, 1, 49]);
        assert_eq!(pixel(&image, 2, 0), [41, 2, 58]);
        assert_eq!(pixel(&image, 6, 5), [222, 38, 61]);
        assert_eq!(pixel(&image, 7, 7), [223, 21, 57]);
        assert_eq!(position_weighted_sum(&image), 1_497_137);
    }

    #[test]
    fn ignores_data_after_the_end_of_image_like_opencv() {
        let with_trailer = [COLOUR_420, b"trailing junk"].concat();
        assert_eq!(decode(&with_trailer).unwrap(), decode(COLOUR_420).unwrap());
    }

    #[test]
    fn truncated_data_is_an_error_as_imdecode_returns_no_image() {
        // 3 bytes: only the signature; 100: inside a quantisation table; 300: inside the scan.
        for length in [3, 100, 300] {
            let error = decode(&COLOUR_420[..length]).unwrap_err();
            assert!(
                format!("{error:#}").contains("truncated"),
                "{length} bytes: {error:#}"
            );
        }
    }

    #[test]
    fn a_missing_end_of_image_marker_is_fine_once_every_pixel_is_decoded() {
        // cv2 decodes this too: libjpeg never needed bytes beyond the scan data.
        let without_eoi = &COLOUR_420[..COLOUR_420.len() - 2];
        assert_eq!(decode(without_eoi).unwrap(), decode(COLOUR_420).unwrap());
    }

    #[test]
    fn data_that_is_not_a_jpeg_is_an_error() {
        for bytes in [
            &b""[..],
            b"\x89PNG\r\n\x1a\n",
            &[0xFF, 0xD8, 0x00, 0x01, 0x02],
        ] {
            let error = decode(bytes).unwrap_err();
            assert!(error.to_string().contains("not a JPEG"), "{error:#}");
        }
    }

    #[test]
    fn fatal_libjpeg_errors_come_back_as_errors() {
        // Byte 75 is the sample precision in the frame header; libjpeg only decodes 8 bits here.
        let mut twelve_bit = GREY.to_vec();
        twelve_bit[75] = 12;
        let error = decode(&twelve_bit).unwrap_err();
        assert!(error.to_string().contains("precision 12"), "{error:#}");
    }
}
