//! The 8-bit pixel buffer passed between pipeline steps.
//!
//! Every decoded image is brought to one of four layouts, the ones the resizer, the JPEG
//! encoder and the PNG/WebP encoders all understand without conversion. Grey stays grey
//! (a quarter of the work and bytes of RGBA), and alpha is only carried when it is used.

use fast_image_resize::PixelType;
use image::{DynamicImage, ExtendedColorType};

/// Channel layout of a [`Raster`], 8 bits per channel, alpha not premultiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One grey channel.
    Luma,
    /// Grey and alpha.
    LumaAlpha,
    /// Red, green, blue.
    Rgb,
    /// Red, green, blue and alpha.
    Rgba,
}

impl Layout {
    /// Bytes per pixel.
    pub(crate) fn channels(self) -> usize {
        match self {
            Layout::Luma => 1,
            Layout::LumaAlpha => 2,
            Layout::Rgb => 3,
            Layout::Rgba => 4,
        }
    }

    /// Whether the last channel is alpha.
    pub(crate) fn has_alpha(self) -> bool {
        matches!(self, Layout::LumaAlpha | Layout::Rgba)
    }

    /// The same layout without its alpha channel.
    pub(crate) fn without_alpha(self) -> Layout {
        match self {
            Layout::Luma | Layout::LumaAlpha => Layout::Luma,
            Layout::Rgb | Layout::Rgba => Layout::Rgb,
        }
    }

    pub(crate) fn pixel_type(self) -> PixelType {
        match self {
            Layout::Luma => PixelType::U8,
            Layout::LumaAlpha => PixelType::U8x2,
            Layout::Rgb => PixelType::U8x3,
            Layout::Rgba => PixelType::U8x4,
        }
    }

    pub(crate) fn color_type(self) -> ExtendedColorType {
        match self {
            Layout::Luma => ExtendedColorType::L8,
            Layout::LumaAlpha => ExtendedColorType::La8,
            Layout::Rgb => ExtendedColorType::Rgb8,
            Layout::Rgba => ExtendedColorType::Rgba8,
        }
    }
}

/// An 8-bit image in one of the [`Layout`]s, rows packed without padding.
#[derive(Clone)]
pub(crate) struct Raster {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) layout: Layout,
    /// `width * height * layout.channels()` bytes.
    pub(crate) data: Vec<u8>,
}

impl std::fmt::Debug for Raster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raster")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("layout", &self.layout)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl Raster {
    /// Adds `offsets[c]` to every sample of channel `c` (`offsets` has one per channel),
    /// saturating at 0 and 255.
    pub(crate) fn add_offsets(&mut self, offsets: &[i16]) {
        let c = self.layout.channels();
        debug_assert_eq!(offsets.len(), c);
        // A pattern of 48 bytes (a multiple of every pixel size and of 16) that adds and
        // subtracts per byte, so that the loop below becomes saturating vector adds.
        let (mut add, mut sub) = ([0u8; 48], [0u8; 48]);
        for i in 0..48 {
            let o = offsets[i % c].clamp(-255, 255);
            add[i] = u8::try_from(o.max(0)).unwrap_or(u8::MAX);
            sub[i] = u8::try_from((-o).max(0)).unwrap_or(u8::MAX);
        }
        let mut chunks = self.data.chunks_exact_mut(48);
        for chunk in &mut chunks {
            let chunk: &mut [u8; 48] = chunk.try_into().expect("chunks of 48");
            for i in 0..48 {
                chunk[i] = chunk[i].saturating_add(add[i]).saturating_sub(sub[i]);
            }
        }
        for ((v, a), s) in chunks.into_remainder().iter_mut().zip(&add).zip(&sub) {
            *v = v.saturating_add(*a).saturating_sub(*s);
        }
    }

    /// Takes a decoded image, converting wider samples (16-bit, float) down to 8 bits.
    pub(crate) fn from_dynamic(image: DynamicImage) -> Raster {
        let (width, height) = (image.width(), image.height());
        let (layout, data) = match image {
            DynamicImage::ImageLuma8(buf) => (Layout::Luma, buf.into_raw()),
            DynamicImage::ImageLumaA8(buf) => (Layout::LumaAlpha, buf.into_raw()),
            DynamicImage::ImageRgb8(buf) => (Layout::Rgb, buf.into_raw()),
            DynamicImage::ImageRgba8(buf) => (Layout::Rgba, buf.into_raw()),
            DynamicImage::ImageLuma16(_) => (Layout::Luma, image.into_luma8().into_raw()),
            DynamicImage::ImageLumaA16(_) => {
                (Layout::LumaAlpha, image.into_luma_alpha8().into_raw())
            }
            other if other.color().has_alpha() => (Layout::Rgba, other.into_rgba8().into_raw()),
            other => (Layout::Rgb, other.into_rgb8().into_raw()),
        };
        Raster {
            width,
            height,
            layout,
            data,
        }
    }

    /// Hands the pixels to the `image` crate, without copying (tests compare our
    /// orientation with its own; the quality measure of [`crate::stages`] orients with it).
    pub(crate) fn into_dynamic(self) -> DynamicImage {
        const INVARIANT: &str = "raster buffer length matches its dimensions";
        let (w, h, data) = (self.width, self.height, self.data);
        match self.layout {
            Layout::Luma => {
                DynamicImage::ImageLuma8(image::ImageBuffer::from_raw(w, h, data).expect(INVARIANT))
            }
            Layout::LumaAlpha => DynamicImage::ImageLumaA8(
                image::ImageBuffer::from_raw(w, h, data).expect(INVARIANT),
            ),
            Layout::Rgb => {
                DynamicImage::ImageRgb8(image::ImageBuffer::from_raw(w, h, data).expect(INVARIANT))
            }
            Layout::Rgba => {
                DynamicImage::ImageRgba8(image::ImageBuffer::from_raw(w, h, data).expect(INVARIANT))
            }
        }
    }

    /// Whether every pixel's alpha is 255 (always true without an alpha channel).
    pub(crate) fn is_opaque(&self) -> bool {
        let channels = self.layout.channels();
        !self.layout.has_alpha()
            || self
                .data
                .chunks_exact(channels)
                .all(|px| px[channels - 1] == u8::MAX)
    }

    /// Drops the alpha channel as is; for an opaque raster that loses nothing.
    pub(crate) fn strip_alpha(self) -> Raster {
        self.map_without_alpha(|colour, _alpha| colour)
    }

    /// Composites onto a white background and drops the alpha channel.
    ///
    /// JPEG has no alpha; transparent areas must come out white (what a browser shows on
    /// a default page), not the black or garbage colour stored under alpha 0.
    pub(crate) fn flatten_on_white(self) -> Raster {
        self.map_without_alpha(|colour, alpha| {
            let (c, a) = (u32::from(colour), u32::from(alpha));
            // c·a + 255·(1 − a), with a in 0..=255, rounded.
            let blended = (c * a + 255 * (255 - a) + 127) / 255;
            u8::try_from(blended).expect("a convex mix of two bytes fits in a byte")
        })
    }

    fn map_without_alpha(self, f: impl Fn(u8, u8) -> u8) -> Raster {
        if !self.layout.has_alpha() {
            return self;
        }
        // One loop per pixel size, into a buffer of the final length: a pixel is then a
        // few fixed-size moves, not a generic loop that grows the buffer with `extend`.
        let data = match self.layout.channels() {
            2 => map_pixels::<2, 1>(&self.data, f),
            _ => map_pixels::<4, 3>(&self.data, f),
        };
        Raster {
            width: self.width,
            height: self.height,
            layout: self.layout.without_alpha(),
            data,
        }
    }
}

/// `f(colour, alpha)` for each colour sample of each `C`-byte pixel (alpha last), into
/// `K = C - 1` bytes a pixel.
fn map_pixels<const C: usize, const K: usize>(data: &[u8], f: impl Fn(u8, u8) -> u8) -> Vec<u8> {
    let mut out = vec![0u8; data.len() / C * K];
    for (px, o) in data.chunks_exact(C).zip(out.chunks_exact_mut(K)) {
        let alpha = px[K];
        for k in 0..K {
            o[k] = f(px[k], alpha);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgba(pixels: &[[u8; 4]]) -> Raster {
        Raster {
            width: u32::try_from(pixels.len()).expect("small"),
            height: 1,
            layout: Layout::Rgba,
            data: pixels.concat(),
        }
    }

    #[test]
    fn flatten_makes_transparent_white_and_keeps_opaque() {
        let flat = rgba(&[[0, 0, 0, 0], [10, 20, 30, 255], [0, 0, 0, 128]]).flatten_on_white();
        assert_eq!(flat.layout, Layout::Rgb);
        assert_eq!(flat.data, [255, 255, 255, 10, 20, 30, 127, 127, 127]);
        let grey = Raster {
            width: 3,
            height: 1,
            layout: Layout::LumaAlpha,
            data: vec![0, 0, 10, 255, 0, 128],
        };
        let flat = grey.clone().flatten_on_white();
        assert_eq!((flat.layout, flat.data), (Layout::Luma, vec![255, 10, 127]));
        let stripped = grey.strip_alpha();
        assert_eq!(
            (stripped.layout, stripped.data),
            (Layout::Luma, vec![0, 10, 0])
        );
    }

    #[test]
    fn opaque_detection() {
        assert!(rgba(&[[1, 2, 3, 255]]).is_opaque());
        assert!(!rgba(&[[1, 2, 3, 255], [1, 2, 3, 254]]).is_opaque());
        let stripped = rgba(&[[1, 2, 3, 255]]).strip_alpha();
        assert_eq!(
            (stripped.layout, stripped.data),
            (Layout::Rgb, vec![1, 2, 3])
        );
    }
}
