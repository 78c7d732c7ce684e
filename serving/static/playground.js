"use strict";
// The playground: POST generate with the form's prompt, steps, guidance (for a model that takes it) and seed as a
// stream of server-sent events: the place in the queue while it waits, a progress bar and live previews while it
// runs, then the PNG and its time. The model, its family and its adapters come from v1/models; the steps' and the
// guidance's defaults and bounds from the request schema, the server's own rules. Every URL is relative to the
// page, so it works under a path prefix as at the root.
const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
const $ = (id) => document.getElementById(id);
let servedWidth = null;
// As many previews as the server takes of a generation: its schema's maximum, read below.
let previews = 0;

function showStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// A number input's default and bounds from its field's schema.
function takeBounds(input, field) {
  input.min = field.minimum;
  input.max = field.maximum;
  input.value = field.default;
}

async function checkReadiness() {
  try {
    const ready = await (await fetch(base + "readyz")).json();
    $("readiness").textContent = ready.status + (ready.reason ? ": " + ready.reason : "");
    const model = (await (await fetch(base + "v1/models")).json()).data[0];
    servedWidth = Number(model.size.split("x")[0]);
    const schema = await (await fetch(base + "openapi.json")).json();
    const request = schema.components.schemas.GenerateRequest.properties;
    previews = request.partial_images.maximum;
    takeBounds($("steps"), request.num_inference_steps);
    // A model without a guidance embedding has no guidance field: the control stays hidden and disabled (a disabled
    // input is neither validated nor sent).
    if (request.guidance_scale) {
      takeBounds($("guidance"), request.guidance_scale);
      $("guidance").disabled = false;
      $("guidance-control").hidden = false;
    }
    $("model").textContent = model.id;
    $("family").textContent = model.family.name;
    $("adapters").textContent = model.adapters.length
      ? model.adapters.map((a) => `${a.id}@${a.revision}${a.file ? " " + a.file : ""} ×${a.scale}`).join(", ")
      : "none";
    // Last: what the page shows once it has taken everything it reads from the server, and may ask with it.
    $("shape").textContent = model.shape + " (HxW)";
    $("generate").disabled = false;
  } catch (error) {
    $("readiness").textContent = "unreachable";
  }
}

// The events of a text/event-stream body, as [name, parsed data]; comment lines are skipped.
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) yield [name, JSON.parse(data)];
    }
  }
}

function showQueued(position) {
  $("queue").textContent = position === 1 ? "queued: position 1, runs next" : `queued: position ${position}`;
  $("queue").hidden = false;
  showStatus("waiting for the pipeline…", false);
}

function showProgress(progress) {
  $("queue").hidden = true;
  $("progress").max = progress.steps;
  $("progress").value = progress.step;
  $("progress").hidden = false;
  showStatus(`step ${progress.step} of ${progress.steps}`, false);
  if (progress.image) {
    $("preview").src = "data:image/png;base64," + progress.image;
    // The preview is the latents' resolution, an eighth of the image: shown at the image's size.
    if (servedWidth) $("preview").style.width = servedWidth + "px";
    $("preview-caption").textContent = `preview after step ${progress.step} (from the latents, no VAE)`;
    $("live").hidden = false;
  }
}

async function showImage(result, started) {
  const seconds = (performance.now() - started) / 1000;
  $("image").src = "data:image/png;base64," + result.image;
  await $("image").decode();
  $("timing").textContent =
    `seed ${result.seed} · ${result.execution_time.toFixed(2)} s generating · ${seconds.toFixed(2)} s in all`;
  $("live").hidden = true;
  $("result").hidden = false;
  showStatus("done", false);
}

async function generate(event) {
  event.preventDefault();
  const body = {
    prompt: $("prompt").value,
    num_inference_steps: Number($("steps").value),
    stream: true,
    partial_images: previews,
  };
  if (!$("guidance").disabled) body.guidance_scale = Number($("guidance").value);
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  $("generate").disabled = true;
  $("result").hidden = true;
  $("live").hidden = true;
  $("progress").hidden = true;
  showStatus("sending…", false);
  const started = performance.now();
  try {
    const response = await fetch(base + "generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      const result = await response.json();
      const retry = response.headers.get("Retry-After");
      throw new Error(result.error.message + (retry ? ` (retry after ${retry} s)` : ""));
    }
    let completed = false;
    for await (const [name, data] of serverSentEvents(response.body)) {
      if (name === "queued") showQueued(data.position);
      else if (name === "progress") showProgress(data);
      else if (name === "error") throw new Error(data.error.message);
      else if (name === "completed") {
        await showImage(data, started);
        completed = true;
      }
    }
    if (!completed) throw new Error("the stream ended before the image");
  } catch (error) {
    $("queue").hidden = true;
    showStatus(error.message, true);
  } finally {
    $("generate").disabled = false;
  }
}

$("generate-form").addEventListener("submit", generate);
checkReadiness();
