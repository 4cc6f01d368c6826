// The demo page: upload an image, click on a slice, show the mask the server returns, download it.
// The server keeps the clicks (see medsa_peft/web/server.py for the API); each answer carries the clicks of every
// slice, which the page draws. Requests go one after the other, in the order of the clicks.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  image: null, // what /api/upload returned
  clicks: {}, // slice index -> [[x, y, label], ...], as the server last said
  version: 0, // counts the answers of the server, so that the picture of the slice is fetched again
  queue: Promise.resolve(), // the requests of the clicks, one after the other
};

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = false;
}

function clearMessage() {
  $("message").textContent = "";
  $("message").hidden = true;
}

async function request(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    throw new Error(`the demo server cannot be reached (${error.message})`);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
  }
  return body;
}

function currentSlice() {
  return Number($("slice").value);
}

function setImage(image) {
  state.image = image;
  state.clicks = {};
  const enabled = image !== null;
  $("stage").hidden = !enabled;
  $("undo").disabled = $("start-over").disabled = !enabled;
  $("download").setAttribute("aria-disabled", String(!enabled));
  $("slice-control").hidden = !enabled || image.slices < 2;
  if (!enabled) {
    $("download").removeAttribute("href");
    $("view").removeAttribute("src");
    $("markers").replaceChildren();
    return;
  }
  $("download").href = `/api/sessions/${image.session}/mask`;
  $("download").download = image.mask_name;
  $("slice").max = image.slices - 1;
  $("slice").value = Math.floor(image.slices / 2);
  showSlice("");
}

// Shows the current slice with its mask and clicks; `note` ends the status line.
function showSlice(note) {
  const image = state.image;
  const index = currentSlice();
  $("slice-number").value = index;
  $("view").src = `/api/sessions/${image.session}/slices/${index}.png?v=${state.version}`;
  const clicks = state.clicks[index] || [];
  $("markers").replaceChildren(
    ...clicks.map(([x, y, label]) => {
      const marker = document.createElement("div");
      marker.className = `marker ${label ? "object" : "background"}`;
      marker.style.left = `${((x + 0.5) / image.width) * 100}%`;
      marker.style.top = `${((y + 0.5) / image.height) * 100}%`;
      return marker;
    }),
  );
  $("status").textContent =
    `${image.name}: ${image.width} x ${image.height} pixels, ${image.slices} slice(s); ` +
    `slice ${index}: ${clicks.length} click(s)${note}`;
}

async function upload() {
  const files = $("file").files;
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  form.append("modality", $("modality").value);
  clearMessage();
  $("status").textContent = `reading ${files.length > 1 ? `${files.length} files` : files[0].name}...`;
  try {
    setImage(await request("/api/upload", { method: "POST", body: form }));
  } catch (error) {
    setImage(null);
    $("status").textContent = "";
    showMessage(error.message);
  }
}

// Posts `action` (click, undo, start-over) after the requests before it, then shows what the server answered.
function post(action, body) {
  const image = state.image;
  state.queue = state.queue.then(async () => {
    if (state.image !== image) return; // another image was uploaded meanwhile
    $("stage").classList.add("busy");
    try {
      const answer = await request(`/api/sessions/${image.session}/${action}`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body || {}),
      });
      if (state.image !== image) return;
      clearMessage();
      state.clicks = answer.clicks;
      state.version += 1;
      let note = "";
      if (answer.slice !== null) {
        $("slice").value = answer.slice; // an undo shows the slice it changed
        note = `, ${answer.pixels} pixel(s) in the mask`;
        if (answer.iou !== null) note += ` (SAM's predicted IoU ${answer.iou.toFixed(2)})`;
      }
      showSlice(note);
    } catch (error) {
      showMessage(error.message);
    } finally {
      $("stage").classList.remove("busy");
    }
  });
}

function click(event, label) {
  event.preventDefault();
  const image = state.image;
  const box = $("view").getBoundingClientRect();
  const x = Math.floor(((event.clientX - box.left) / box.width) * image.width);
  const y = Math.floor(((event.clientY - box.top) / box.height) * image.height);
  if (x < 0 || y < 0 || x >= image.width || y >= image.height) return;
  post("click", { slice: currentSlice(), x, y, label });
}

$("file").addEventListener("change", upload);
$("modality").addEventListener("change", upload);
$("slice").addEventListener("input", () => showSlice(""));
$("view").addEventListener("click", (event) => click(event, event.shiftKey || $("negative").checked ? 0 : 1));
$("view").addEventListener("contextmenu", (event) => click(event, 0));
$("view").addEventListener("load", () => {
  // small pictures are shown enlarged, pixel for pixel
  const scale = Math.max(1, Math.floor(512 / Math.max(state.image.width, state.image.height)));
  $("view").style.width = `${state.image.width * scale}px`;
});
$("undo").addEventListener("click", () => post("undo"));
$("start-over").addEventListener("click", () => post("start-over"));
