// End-to-end test of the dashboard (GET /) in headless Chromium, driven by
// playwright-core: it uploads a photo through the page's file input and waits
// for the job's row to show `done` with its thumbnail. Run by .ci/dashboard-e2e.sh,
// which starts the server and passes its address as PIXPOOL_URL.
const { chromium } = require("playwright-core");
const path = require("path");

(async () => {
  const url = process.env.PIXPOOL_URL;
  if (!url) throw new Error("PIXPOOL_URL is not set");
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
  });
  let failed = 0;
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(url + "/", { waitUntil: "load" });
    const photo = path.resolve(__dirname, "../../../test-data/04-fallenleaf.jpg");
    await page.setInputFiles("#files", photo);
    // The row is fed by the job's event stream; the thumbnail appears once the
    // `thumb` output event arrives, and the state cell says done.
    // Until the thumbnail has loaded, the same <img> shows the job's ThumbHash.
    await page.waitForSelector("tr[data-state=done] img.thumb[data-loaded]", { timeout: 30000 });
    const id = await page.getAttribute("tr[data-state=done]", "data-id");
    if (!/^[0-9a-f]{39}$/.test(id || "")) throw new Error("no job id in the row: " + id);
    const loaded = await page.$eval("img.thumb", (img) => img.complete && img.naturalWidth === 200);
    if (!loaded) throw new Error("the thumbnail did not load as a 200-px image");
    const dominant = await page.getAttribute("tr[data-state=done]", "data-dominant");
    if (!/^#[0-9a-f]{6}$/.test(dominant || "")) throw new Error("no dominant colour on the row: " + dominant);
    // The page's ThumbHash decoder on the job's own hash: a landscape picture,
    // 32 px wide, with detail (not one flat colour).
    const shown = await page.evaluate(async (jobId) => {
      const job = await (await fetch("/jobs/" + jobId)).json();
      const img = new Image();
      img.src = thumbHashToDataURL(job.placeholder.thumbhash);
      await img.decode();
      const c = document.createElement("canvas");
      c.width = img.width; c.height = img.height;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const px = ctx.getImageData(0, 0, c.width, c.height).data;
      const reds = new Set();
      for (let i = 0; i < px.length; i += 4) reds.add(px[i]);
      return { w: img.width, h: img.height, levels: reds.size };
    }, id);
    if (shown.w !== 32 || shown.h < 14 || shown.h > 24 || shown.levels < 8) {
      throw new Error("the ThumbHash decoded as " + JSON.stringify(shown));
    }
    // The `pic` preset's AVIF, negotiated by Accept and decoded by the browser, shows
    // the same picture as its JPEG fallback.
    const pic = await page.evaluate(async (jobId) => {
      const get = async (accept) => {
        const r = await fetch("/images/" + jobId + "/pic", { headers: { Accept: accept } });
        return { type: r.headers.get("content-type"), vary: r.headers.get("vary"),
                 bitmap: await createImageBitmap(await r.blob()) };
      };
      const avif = await get("image/avif,image/webp,*/*"), jpeg = await get("*/*");
      const pixels = (bitmap) => {
        const c = document.createElement("canvas");
        c.width = bitmap.width; c.height = bitmap.height;
        const ctx = c.getContext("2d");
        ctx.drawImage(bitmap, 0, 0);
        return ctx.getImageData(0, 0, c.width, c.height).data;
      };
      const a = pixels(avif.bitmap), j = pixels(jpeg.bitmap);
      let sum = 0;
      for (let i = 0; i < a.length; i += 4) for (let k = 0; k < 3; k++) sum += Math.abs(a[i + k] - j[i + k]);
      return { avif: avif.type, jpeg: jpeg.type, vary: avif.vary, size: [avif.bitmap.width, avif.bitmap.height],
               jpegSize: [jpeg.bitmap.width, jpeg.bitmap.height], mean: sum / (a.length / 4 * 3) };
    }, id);
    if (pic.avif !== "image/avif" || pic.jpeg !== "image/jpeg" || pic.vary !== "Accept"
        || pic.size.join() !== pic.jpegSize.join() || !(pic.mean < 8)) {
      throw new Error("the AVIF variant as the browser saw it: " + JSON.stringify(pic));
    }
    // Live stats come from /stats once the admin process has written them.
    await page.waitForFunction(() => /\d+ \/ \d+/.test(document.querySelector("#stats").textContent), null, { timeout: 15000 });
    if (errors.length) throw new Error("page errors: " + errors.join("; "));
    await page.screenshot({ path: process.env.SCREENSHOT || "/tmp/pixpool-dashboard.png" });
    console.log("ok 1 - dashboard upload shows the job done with its thumbnail and placeholder, its AVIF decodes (" + id + ")");
  } catch (e) {
    failed = 1;
    console.log("not ok 1 - " + e.message);
  } finally {
    await browser.close();
  }
  console.log(failed ? "dashboard e2e: FAILED" : "dashboard e2e: ok");
  process.exit(failed);
})();
