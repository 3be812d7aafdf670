//! Bytes to a [`Raster`]: sniff, check limits on the header, decode once (a JPEG at the
//! [`Scale`] the outputs allow), normalise.
//!
//! Colour:
//! - An embedded ICC profile is honoured by converting the pixels to sRGB ([`colour`]):
//!   RGB profiles (Display P3, Adobe RGB, …) after decoding, CMYK profiles through the
//!   inks the JPEG decoders hand back. Outputs are sRGB and carry no profile.
//! - CMYK and YCCK JPEGs without a usable CMYK profile go through the default one, as in
//!   libvips (the decoders take the stored values as Adobe's inverted ones, the
//!   convention that Photoshop and every other prepress tool writes).
//! - 16-bit PNGs are reduced to 8 bits.
//!
//! [`colour`]: crate::colour

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader};
use tracing::debug;

use crate::colour::{self, Profile};
use crate::error::ImagingError;
use crate::format::{image_format, Format};
use crate::frames;
use crate::jpeg::{self, Coding, Frame, Scale, ScaledJpeg, Scan, ScanError};
use crate::limits::Limits;
use crate::metadata;
use crate::raster::Raster;

/// A decoded image in its stored orientation (the [`Header`] has the EXIF orientation).
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) format: Format,
    /// The pixels, at the scale asked of [`Header::decode`].
    pub(crate) raster: Raster,
}

/// A file whose header has been read and checked against the limits; no pixel buffer
/// exists yet.
pub(crate) struct Header<'a> {
    pub(crate) format: Format,
    /// Stored width, as the header declares it.
    pub(crate) width: u32,
    /// Stored height.
    pub(crate) height: u32,
    /// The EXIF orientation.
    pub(crate) orientation: Orientation,
    /// For a JPEG, what its frame header says (`None` for other formats, or when our own
    /// reading of it failed and the `image` crate's decoder is left to judge).
    pub(crate) jpeg: Option<Frame>,
    /// What the embedded ICC profile asks of the pixels (`None`: they are sRGB).
    pub(crate) profile: Option<Profile>,
    data: &'a [u8],
    decoder: Box<dyn ImageDecoder + 'a>,
}

impl std::fmt::Debug for Header<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header")
            .field("format", &self.format)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("orientation", &self.orientation)
            .field("jpeg", &self.jpeg)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// Sniffs `data` (a whole file), reads its header and checks it against `limits`.
pub(crate) fn read_header<'a>(data: &'a [u8], limits: &Limits) -> Result<Header<'a>, ImagingError> {
    let format = Format::sniff(data).ok_or(ImagingError::Sniff)?;
    if format == Format::Jpeg && !jpeg::has_end(data) {
        return Err(ImagingError::DecodeTruncated { format });
    }

    // What the dimension limits do not see: an ICC profile or metadata chunks the decoder
    // would inflate or copy (a PNG's `iCCP` is inflated while the header is read), and
    // frames larger than the GIF screen or WebP canvas the header declares.
    metadata::check(format, data)?;
    if matches!(format, Format::Gif | Format::WebP) {
        frames::check_frame_sizes_in(data, format, limits)?;
    }

    let jpeg = (format == Format::Jpeg)
        .then(|| Frame::parse(data))
        .flatten();
    if let Some(frame) = &jpeg {
        frame.coding.check()?;
    }
    let mut decoder: Box<dyn ImageDecoder + 'a> = match (jpeg, image_format(format)) {
        // Codings zune-jpeg does not read.
        (Some(frame), _) if matches!(frame.coding, Coding::Lossless | Coding::Arithmetic) => {
            Box::new(jpeg::Special::new(data, frame))
        }
        (_, None) => heif_decoder(data)?,
        (_, Some(image_format)) => {
            let mut reader = ImageReader::with_format(Cursor::new(data), image_format);
            // While the header is parsed only the allocation bound applies (PNG text and
            // ICC chunks come before the pixels); width and height are checked by us just
            // below, so that the error can say which dimensions were refused.
            let mut header_limits = limits.to_image_limits();
            header_limits.max_image_width = None;
            header_limits.max_image_height = None;
            reader.limits(header_limits);
            Box::new(
                reader
                    .into_decoder()
                    .map_err(|source| header_error(format, source))?,
            )
        }
    };
    let (width, height) = decoder.dimensions();
    limits.check_dimensions(width, height)?;
    limits.check_alloc(width, height, decoder.total_bytes())?;
    // No pixel buffer exists yet. From here the decoder holds the full limits too, for
    // allocations of its own (GIF frames, zune-jpeg's width/height bounds).
    decoder
        .set_limits(limits.to_image_limits())
        .map_err(|source| header_error(format, source))?;

    let orientation = decoder.orientation().unwrap_or_else(|err| {
        // A damaged EXIF block should not cost the image: show it as stored.
        debug!(cause = %err, "unreadable EXIF orientation, ignoring it");
        Orientation::NoTransforms
    });
    let profile = match decoder.icc_profile() {
        Ok(Some(icc)) => colour::profile(&icc),
        Ok(None) => None,
        Err(err) => {
            debug!(cause = %err, "unreadable ICC profile, taking the pixels as sRGB");
            None
        }
    };
    // Inks need a CMYK profile: without one of their own (or with one of another colour
    // space), the default one.
    let profile = match (&jpeg, profile) {
        (Some(frame), profile)
            if frame.components == 4 && !matches!(profile, Some(Profile::Cmyk(_))) =>
        {
            colour::default_cmyk().map(Profile::Cmyk)
        }
        (_, profile) => profile,
    };
    Ok(Header {
        format,
        width,
        height,
        orientation,
        jpeg,
        profile,
        data,
        decoder,
    })
}

impl Header<'_> {
    /// Decodes the pixels, for a JPEG at `scale` (other formats, and JPEGs whose scaled
    /// decode is not worth it, are decoded whole: the resizer copes with either).
    ///
    /// `keep_alpha` is false when no output can store alpha: transparency is then
    /// flattened onto white once, here, and everything downstream works on fewer
    /// channels.
    ///
    /// `reduce_to`: for a WebP decoded by libwebp (the `libwebp` feature), the size its
    /// rescaler produces; ignored otherwise.
    pub(crate) fn decode(
        self,
        scale: Scale,
        reduce_to: Option<(u32, u32)>,
        limits: &Limits,
        keep_alpha: bool,
    ) -> Result<Decoded, ImagingError> {
        let Header {
            format,
            width,
            height,
            orientation,
            jpeg,
            profile,
            data,
            decoder,
        } = self;
        let colour = decoder.color_type();
        let scans = match jpeg {
            Some(frame) if frame.progressive => progressive_scans(data)?,
            _ => Vec::new(),
        };
        let cmyk = match &profile {
            Some(Profile::Cmyk(transform)) => Some(transform.as_ref()),
            _ => None,
        };
        let jpeg = jpeg.and_then(|frame| {
            decode_jpeg(ScaledJpeg {
                data,
                frame: &frame,
                scans: &scans,
                scale,
                limits,
                cmyk,
            })
        });
        let native = jpeg.or_else(|| decode_webp(format, data, reduce_to, limits));
        let mut raster = match native {
            Some(raster) => raster,
            None => {
                // GIF: the decoder's `read_image` reads the first frame only, never the
                // animation.
                let image = DynamicImage::from_decoder(decoder)
                    .map_err(|source| ImagingError::Decode { format, source })?;
                Raster::from_dynamic(image)
            }
        };
        let converted = profile.as_ref().is_some_and(|p| p.apply(&mut raster));
        if raster.layout.has_alpha() {
            if raster.is_opaque() {
                raster = raster.strip_alpha();
            } else if !keep_alpha {
                raster = raster.flatten_on_white();
            }
        }
        debug!(
            ?format,
            width,
            height,
            decoded_width = raster.width,
            decoded_height = raster.height,
            ?colour,
            layout = ?raster.layout,
            ?orientation,
            ?profile,
            converted,
            "decoded"
        );
        Ok(Decoded { format, raster })
    }
}

impl Header<'_> {
    /// Decodes whole with the `image` crate, whatever the format (for the benchmarks).
    pub(crate) fn decode_with_image_crate(self) -> Result<Raster, ImagingError> {
        let format = self.format;
        let image = DynamicImage::from_decoder(self.decoder)
            .map_err(|source| ImagingError::Decode { format, source })?;
        Ok(Raster::from_dynamic(image))
    }
}

/// libheif's decoder of a HEIF (the `heif` feature).
#[cfg(feature = "heif")]
fn heif_decoder(data: &[u8]) -> Result<Box<dyn ImageDecoder + '_>, ImagingError> {
    crate::heif::HeifDecoder::new(data)
        .map(|d| Box::new(d) as Box<dyn ImageDecoder>)
        .map_err(|message| ImagingError::ReadHeader {
            format: Format::Heif,
            source: image::ImageError::Decoding(image::error::DecodingError::new(
                image::error::ImageFormatHint::Name("HEIF".into()),
                message,
            )),
        })
}

/// A build without libheif reads no HEIF (the probe already said so at the door).
#[cfg(not(feature = "heif"))]
fn heif_decoder(_: &[u8]) -> Result<Box<dyn ImageDecoder + '_>, ImagingError> {
    Err(ImagingError::UnsupportedFormat {
        format: Format::Heif,
        hint: crate::heif::BUILD_HINT,
    })
}

/// Decodes a JPEG with the decoder chosen for `scale`, or returns `None` to leave it to
/// zune-jpeg at full size: when that is the faster way, or when the other decoder refused
/// the file (zune-jpeg then decides, so that what is accepted and the errors given stay
/// those of the plain build).
#[cfg(not(feature = "libjpeg"))]
fn decode_jpeg(job: ScaledJpeg<'_>) -> Option<Raster> {
    // zune-jpeg (through the `image` crate) hands back CMYK already made RGB: a CMYK
    // profile needs the inks, which `jpeg-decoder` gives.
    if !jpeg::prefer_scaled_decoder(job.frame, job.scale) && job.cmyk.is_none() {
        return None;
    }
    scaled_jpeg(job)
        .inspect_err(|err| debug!(cause = %err, "scaled decode failed, decoding whole"))
        .ok()
}

/// Decodes a JPEG with libjpeg where it is the faster ([`jpeg::prefer_libjpeg`]: every
/// reduced scale, and CMYK; every scale with SIMD), or returns `None` to leave it to zune-jpeg at full size: when
/// that is the faster way, or when libjpeg refused the file (zune-jpeg then decides, so
/// that what is accepted and the errors given stay those of the pure-Rust build).
#[cfg(feature = "libjpeg")]
fn decode_jpeg(job: ScaledJpeg<'_>) -> Option<Raster> {
    if !jpeg::prefer_libjpeg(job.frame, job.scale) {
        return None;
    }
    scaled_jpeg(job)
        .inspect_err(|err| debug!(cause = %err, "libjpeg did not decode it, trying zune-jpeg"))
        .ok()
}

/// The build's decoder for a JPEG at a DCT scale (see `decode_jpeg`), without the
/// fall-back.
pub(crate) fn scaled_jpeg(job: ScaledJpeg<'_>) -> Result<Raster, String> {
    #[cfg(feature = "libjpeg")]
    return crate::libjpeg::decode(job).map_err(|e| e.to_string());
    #[cfg(not(feature = "libjpeg"))]
    jpeg::decode_scaled(job).map_err(|e| e.to_string())
}

/// Decodes a WebP with libwebp, or returns `None` to leave it to the `image` crate (an
/// animation, or a file libwebp refused: what is accepted and the errors given stay those
/// of the plain build).
#[cfg(feature = "libwebp")]
fn decode_webp(
    format: Format,
    data: &[u8],
    reduce_to: Option<(u32, u32)>,
    limits: &Limits,
) -> Option<Raster> {
    if format != Format::WebP {
        return None;
    }
    crate::webp::decode(data, reduce_to, limits)
        .inspect_err(|err| debug!(cause = %err, "libwebp did not decode it, trying image-webp"))
        .ok()
}

#[cfg(not(feature = "libwebp"))]
fn decode_webp(_: Format, _: &[u8], _: Option<(u32, u32)>, _: &Limits) -> Option<Raster> {
    None
}

/// The scans of a progressive JPEG, refusing a pathological number of them whichever
/// decoder runs. A stream we cannot walk gets an empty list: nothing is pruned and the
/// decoder judges it.
fn progressive_scans(data: &[u8]) -> Result<Vec<Scan>, ImagingError> {
    match jpeg::scans(data) {
        Ok(scans) => Ok(scans),
        Err(ScanError::Malformed) => Ok(Vec::new()),
        Err(err @ ScanError::TooMany) => Err(ImagingError::Decode {
            format: Format::Jpeg,
            source: image::ImageError::Decoding(image::error::DecodingError::new(
                image::ImageFormat::Jpeg.into(),
                err,
            )),
        }),
    }
}

fn header_error(format: Format, source: image::ImageError) -> ImagingError {
    ImagingError::ReadHeader { format, source }
}
