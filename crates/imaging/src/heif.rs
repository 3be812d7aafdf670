//! HEIC/HEIF input. The container (ISO-BMFF boxes) is read here in every build: the
//! door's probe takes the size from the `ispe` properties and refuses what the limits
//! refuse before the 202. Decoding is libheif's (the `heif` feature, in the
//! native-codecs build; Debian's `libheif-dev`, 1.15 or later, through the few C calls
//! declared below), behind the `image` crate's decoder trait like every other input:
//! the primary image only, its ICC profile honoured.
//!
//! Orientation is applied once and only once: libheif applies the `irot`/`imir`
//! transforms while decoding, and then the EXIF orientation (which an iPhone writes
//! too, describing the same turn) is ignored; a file with no transform property (as
//! libheif 1.15's `heif-enc` writes from a rotated JPEG) gets its EXIF orientation.

/// What a build without libheif tells a client of a HEIF upload.
pub(crate) const BUILD_HINT: &str = " (the native-codecs build reads HEIC and HEIF, with libheif)";

/// The largest `ispe` (image spatial extents) of the file: the primary image's size,
/// or larger (a grid's tiles and thumbnails are smaller). `None` until the `meta` box
/// is whole in `data`, or without one.
pub(crate) fn largest_extent(data: &[u8]) -> Option<(u32, u32)> {
    let mut best: Option<(u32, u32)> = None;
    for_each_property(data, &mut |kind, body| {
        if kind == b"ispe" {
            // FullBox: version and flags, then width and height.
            if let (Some(w), Some(h)) = (be32(body, 4), be32(body, 8)) {
                if best.is_none_or(|(bw, bh)| {
                    u64::from(w) * u64::from(h) > u64::from(bw) * u64::from(bh)
                }) {
                    best = Some((w, h));
                }
            }
        }
    })?;
    best
}

/// Whether the file has an `irot` or `imir` property (which libheif applies).
#[cfg_attr(not(feature = "heif"), allow(dead_code))]
pub(crate) fn has_transform(data: &[u8]) -> bool {
    let mut found = false;
    let _ = for_each_property(data, &mut |kind, _| {
        found |= kind == b"irot" || kind == b"imir"
    });
    found
}

fn be32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// One box: its four-character type and its body.
type BoxRef<'a> = (&'a [u8], &'a [u8]);

/// The boxes of `data` as (type, body), each whole within it, and whether they fill it
/// exactly (`false`: the walk stopped at one that runs past the end or is malformed).
fn boxes(data: &[u8]) -> (Vec<BoxRef<'_>>, bool) {
    let (mut out, mut at) = (Vec::new(), 0usize);
    while at + 8 <= data.len() {
        let size = be32(data, at).unwrap_or(0) as u64;
        let kind = &data[at + 4..at + 8];
        let (header, len) = match size {
            // To the end of the enclosing box.
            0 => (8u64, (data.len() - at) as u64),
            1 => match data.get(at + 8..at + 16) {
                Some(b) => (16, u64::from_be_bytes(b.try_into().unwrap_or([0; 8]))),
                None => return (out, false),
            },
            n => (8, n),
        };
        if len < header {
            return (out, false);
        }
        let Some(end) = (at as u64)
            .checked_add(len)
            .filter(|e| *e <= data.len() as u64)
        else {
            return (out, false);
        };
        out.push((kind, &data[at + header as usize..end as usize]));
        at = end as usize;
    }
    (out, at == data.len())
}

/// Calls `visit` with the type and body of every item property (`meta` → `iprp` →
/// `ipco`). `None` when the `meta` box is not whole in `data`.
fn for_each_property(data: &[u8], visit: &mut dyn FnMut(&[u8], &[u8])) -> Option<()> {
    let (top, _) = boxes(data);
    let meta = top.iter().find(|(k, _)| *k == b"meta").map(|(_, b)| *b)?;
    // `meta` is a FullBox: version and flags first.
    let (children, _) = boxes(meta.get(4..)?);
    for (kind, body) in children {
        if kind != b"iprp" {
            continue;
        }
        for (kind, body) in boxes(body).0 {
            if kind == b"ipco" {
                for (kind, body) in boxes(body).0 {
                    visit(kind, body);
                }
            }
        }
    }
    Some(())
}

#[cfg(feature = "heif")]
pub(crate) use decoder::HeifDecoder;

#[cfg(feature = "heif")]
#[allow(unsafe_code)]
mod decoder {
    use std::ffi::{c_char, c_int, c_void, CStr};

    use image::error::{DecodingError, ImageFormatHint};
    use image::metadata::Orientation;
    use image::{ColorType, ImageDecoder, ImageError, ImageResult};

    /// libheif's error: `code` 0 is success; `message` is always a valid C string.
    #[repr(C)]
    struct HeifError {
        code: c_int,
        subcode: c_int,
        message: *const c_char,
    }

    #[repr(C)]
    struct Context {
        _private: [u8; 0],
    }
    #[repr(C)]
    struct Handle {
        _private: [u8; 0],
    }
    #[repr(C)]
    struct Image {
        _private: [u8; 0],
    }

    const COLORSPACE_RGB: c_int = 1;
    const CHROMA_INTERLEAVED_RGB: c_int = 10;
    const CHROMA_INTERLEAVED_RGBA: c_int = 11;
    const CHANNEL_INTERLEAVED: c_int = 10;
    /// `heif_color_profile_type_prof` and `_rICC`: an ICC profile.
    const PROFILE_PROF: u32 = u32::from_be_bytes(*b"prof");
    const PROFILE_RICC: u32 = u32::from_be_bytes(*b"rICC");

    #[link(name = "heif")]
    extern "C" {
        fn heif_context_alloc() -> *mut Context;
        fn heif_context_free(ctx: *mut Context);
        fn heif_context_read_from_memory_without_copy(
            ctx: *mut Context,
            mem: *const c_void,
            size: usize,
            options: *const c_void,
        ) -> HeifError;
        fn heif_context_get_primary_image_handle(
            ctx: *mut Context,
            handle: *mut *mut Handle,
        ) -> HeifError;
        fn heif_image_handle_release(handle: *const Handle);
        fn heif_image_handle_get_width(handle: *const Handle) -> c_int;
        fn heif_image_handle_get_height(handle: *const Handle) -> c_int;
        fn heif_image_handle_has_alpha_channel(handle: *const Handle) -> c_int;
        fn heif_image_handle_get_color_profile_type(handle: *const Handle) -> u32;
        fn heif_image_handle_get_raw_color_profile_size(handle: *const Handle) -> usize;
        fn heif_image_handle_get_raw_color_profile(
            handle: *const Handle,
            out: *mut c_void,
        ) -> HeifError;
        fn heif_image_handle_get_list_of_metadata_block_IDs(
            handle: *const Handle,
            type_filter: *const c_char,
            ids: *mut u32,
            count: c_int,
        ) -> c_int;
        fn heif_image_handle_get_metadata_size(handle: *const Handle, id: u32) -> usize;
        fn heif_image_handle_get_metadata(
            handle: *const Handle,
            id: u32,
            out: *mut c_void,
        ) -> HeifError;
        fn heif_decode_image(
            handle: *const Handle,
            out: *mut *mut Image,
            colorspace: c_int,
            chroma: c_int,
            options: *const c_void,
        ) -> HeifError;
        fn heif_image_get_plane_readonly(
            img: *const Image,
            channel: c_int,
            stride: *mut c_int,
        ) -> *const u8;
        fn heif_image_release(img: *const Image);
    }

    fn check(e: HeifError) -> Result<(), String> {
        if e.code == 0 {
            return Ok(());
        }
        // SAFETY: libheif documents `message` as always set, to a static string.
        let text = unsafe { CStr::from_ptr(e.message) }.to_string_lossy();
        Err(format!("libheif: {text} ({}.{})", e.code, e.subcode))
    }

    /// A parsed file and its primary image's handle, released on drop.
    pub(crate) struct HeifDecoder<'a> {
        _data: &'a [u8],
        ctx: *mut Context,
        handle: *mut Handle,
        width: u32,
        height: u32,
        alpha: bool,
        icc: Option<Vec<u8>>,
        orientation: Orientation,
    }

    // The context and handle are used by one thread at a time (the decoder is moved,
    // never shared); libheif contexts are not tied to a thread.
    unsafe impl Send for HeifDecoder<'_> {}

    impl Drop for HeifDecoder<'_> {
        fn drop(&mut self) {
            // SAFETY: both were allocated by libheif and are released once, here.
            unsafe {
                if !self.handle.is_null() {
                    heif_image_handle_release(self.handle);
                }
                heif_context_free(self.ctx);
            }
        }
    }

    impl<'a> HeifDecoder<'a> {
        /// Parses `data` (no pixels decoded yet): the primary image's displayed size
        /// (transforms applied), alpha, ICC profile and the orientation left to apply.
        pub(crate) fn new(data: &'a [u8]) -> Result<HeifDecoder<'a>, String> {
            // SAFETY: `ctx` is checked non-null; `data` outlives the decoder, which
            // holds the borrow (`_data`) as libheif reads it without copying.
            let ctx = unsafe { heif_context_alloc() };
            if ctx.is_null() {
                return Err("libheif could not allocate a context".into());
            }
            let mut decoder = HeifDecoder {
                _data: data,
                ctx,
                handle: std::ptr::null_mut(),
                width: 0,
                height: 0,
                alpha: false,
                icc: None,
                orientation: Orientation::NoTransforms,
            };
            unsafe {
                check(heif_context_read_from_memory_without_copy(
                    ctx,
                    data.as_ptr().cast(),
                    data.len(),
                    std::ptr::null(),
                ))?;
                check(heif_context_get_primary_image_handle(
                    ctx,
                    &mut decoder.handle,
                ))?;
                let handle = decoder.handle;
                decoder.width = u32::try_from(heif_image_handle_get_width(handle)).unwrap_or(0);
                decoder.height = u32::try_from(heif_image_handle_get_height(handle)).unwrap_or(0);
                decoder.alpha = heif_image_handle_has_alpha_channel(handle) != 0;
                let kind = heif_image_handle_get_color_profile_type(handle);
                if kind == PROFILE_PROF || kind == PROFILE_RICC {
                    let size = heif_image_handle_get_raw_color_profile_size(handle);
                    if size > crate::limits::MAX_ICC_PROFILE_BYTES {
                        return Err(format!(
                            "an ICC profile of {size} bytes exceeds the ICC profile limit of {} bytes",
                            crate::limits::MAX_ICC_PROFILE_BYTES
                        ));
                    }
                    let mut icc = vec![0u8; size];
                    if size > 0
                        && check(heif_image_handle_get_raw_color_profile(
                            handle,
                            icc.as_mut_ptr().cast(),
                        ))
                        .is_ok()
                    {
                        decoder.icc = Some(icc);
                    }
                }
                if !super::has_transform(data) {
                    decoder.orientation = exif_orientation(handle);
                }
            }
            Ok(decoder)
        }

        fn decode(&self) -> Result<Vec<u8>, String> {
            let chroma = if self.alpha {
                CHROMA_INTERLEAVED_RGBA
            } else {
                CHROMA_INTERLEAVED_RGB
            };
            let channels = if self.alpha { 4 } else { 3 };
            let mut img: *mut Image = std::ptr::null_mut();
            // SAFETY: `handle` is live; `img` is released below whatever happens; the
            // plane is read within its `height` rows of `stride` bytes.
            unsafe {
                check(heif_decode_image(
                    self.handle,
                    &mut img,
                    COLORSPACE_RGB,
                    chroma,
                    std::ptr::null(),
                ))?;
                let mut stride: c_int = 0;
                let plane = heif_image_get_plane_readonly(img, CHANNEL_INTERLEAVED, &mut stride);
                let row = self.width as usize * channels;
                let result = match usize::try_from(stride) {
                    Ok(stride) if !plane.is_null() && stride >= row => {
                        let mut out = Vec::with_capacity(row * self.height as usize);
                        for y in 0..self.height as usize {
                            out.extend_from_slice(std::slice::from_raw_parts(
                                plane.add(y * stride),
                                row,
                            ));
                        }
                        Ok(out)
                    }
                    _ => Err("libheif gave no interleaved plane".to_string()),
                };
                heif_image_release(img);
                result
            }
        }
    }

    /// The EXIF orientation of the primary image's `Exif` block, if any. The block
    /// starts with a 4-byte offset to the TIFF header.
    unsafe fn exif_orientation(handle: *const Handle) -> Orientation {
        let filter = c"Exif";
        let mut id = 0u32;
        // SAFETY: `handle` is live (the caller's); `block` has the size libheif reported.
        unsafe {
            if heif_image_handle_get_list_of_metadata_block_IDs(handle, filter.as_ptr(), &mut id, 1)
                < 1
            {
                return Orientation::NoTransforms;
            }
            let size = heif_image_handle_get_metadata_size(handle, id);
            // An orientation lives in the first IFD: a large block is no help, and capped.
            if !(8..=crate::limits::MAX_METADATA_BYTES).contains(&size) {
                return Orientation::NoTransforms;
            }
            let mut block = vec![0u8; size];
            if check(heif_image_handle_get_metadata(
                handle,
                id,
                block.as_mut_ptr().cast(),
            ))
            .is_err()
            {
                return Orientation::NoTransforms;
            }
            let skip = u32::from_be_bytes([block[0], block[1], block[2], block[3]]) as usize;
            block
                .get(4 + skip..)
                .and_then(Orientation::from_exif_chunk)
                .unwrap_or(Orientation::NoTransforms)
        }
    }

    impl ImageDecoder for HeifDecoder<'_> {
        fn dimensions(&self) -> (u32, u32) {
            (self.width, self.height)
        }

        fn color_type(&self) -> ColorType {
            if self.alpha {
                ColorType::Rgba8
            } else {
                ColorType::Rgb8
            }
        }

        fn icc_profile(&mut self) -> ImageResult<Option<Vec<u8>>> {
            Ok(self.icc.clone())
        }

        fn orientation(&mut self) -> ImageResult<Orientation> {
            Ok(self.orientation)
        }

        fn read_image(self, buf: &mut [u8]) -> ImageResult<()> {
            let failed = |message: String| {
                ImageError::Decoding(DecodingError::new(
                    ImageFormatHint::Name("HEIF".into()),
                    message,
                ))
            };
            let pixels = self.decode().map_err(failed)?;
            if pixels.len() != buf.len() {
                return Err(failed(format!(
                    "decoded {} bytes where the header promised {}",
                    pixels.len(),
                    buf.len()
                )));
            }
            buf.copy_from_slice(&pixels);
            Ok(())
        }

        fn read_image_boxed(self: Box<Self>, buf: &mut [u8]) -> ImageResult<()> {
            (*self).read_image(buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A box of `kind` around `body`.
    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = u32::try_from(body.len() + 8)
            .expect("small")
            .to_be_bytes()
            .to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }

    fn ispe(w: u32, h: u32) -> Vec<u8> {
        let mut body = vec![0; 4];
        body.extend_from_slice(&w.to_be_bytes());
        body.extend_from_slice(&h.to_be_bytes());
        boxed(b"ispe", &body)
    }

    fn file(properties: &[Vec<u8>]) -> Vec<u8> {
        let ipco = boxed(b"ipco", &properties.concat());
        let iprp = boxed(b"iprp", &ipco);
        let mut meta_body = vec![0; 4];
        meta_body.extend_from_slice(&boxed(b"hdlr", &[0; 24]));
        meta_body.extend_from_slice(&iprp);
        let mut f = boxed(b"ftyp", b"heic\0\0\0\0mif1heic");
        f.extend_from_slice(&boxed(b"meta", &meta_body));
        f.extend_from_slice(&boxed(b"mdat", &[1, 2, 3]));
        f
    }

    #[test]
    fn the_largest_extent_is_the_size_and_transforms_are_seen() {
        let f = file(&[
            ispe(512, 512),
            ispe(4032, 3024),
            boxed(b"irot", &[1]),
            ispe(320, 240),
        ]);
        assert_eq!(largest_extent(&f), Some((4032, 3024)));
        assert!(has_transform(&f));
        let plain = file(&[ispe(64, 48)]);
        assert_eq!(largest_extent(&plain), Some((64, 48)));
        assert!(!has_transform(&plain));
    }

    #[test]
    fn the_door_reads_the_size_or_says_which_build_reads_heif() {
        let probed = crate::probe(&file(&[ispe(4032, 3024)]));
        assert_eq!(probed.is_ok(), cfg!(feature = "heif"));
        match probed {
            Ok(p) => assert_eq!((p.width, p.height), (4032, 3024)),
            Err(e) => {
                assert!(e.is_unsupported() && e.is_input_error(), "{e:?}");
                assert!(
                    e.to_string().contains("native-codecs build reads HEIC"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn a_cut_or_lying_container_gives_no_size() {
        let f = file(&[ispe(4032, 3024)]);
        let meta_end = f.len() - 11;
        assert_eq!(largest_extent(&f[..meta_end - 1]), None, "meta cut short");
        let mut lying = f.clone();
        lying[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(largest_extent(&lying), None, "meta longer than the file");
        assert_eq!(largest_extent(b"\0\0\0\x08ftyp"), None);
    }
}
