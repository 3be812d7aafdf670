#[test]
fn scratch() {
    let p = pixpool_imaging::process(
        std::path::Path::new("/work/shared/corpus/02-blinds.jpg"),
        &[pixpool_imaging::Preset::medium()],
        std::path::Path::new("/tmp/dbg"),
        "a",
        &Default::default(),
    )
    .unwrap();
    eprintln!("{p:?}");
    image::open("/tmp/dbg/a-medium.jpg")
        .unwrap()
        .save("/tmp/dbg/a.png")
        .unwrap();
    image::open("/work/shared/corpus/02-blinds.jpg")
        .unwrap()
        .resize(400, 400, image::imageops::FilterType::Triangle)
        .save("/tmp/dbg/ref.png")
        .unwrap();
}
