"use strict";
// The playground: POST generate with the form's prompt, steps and seed; show the PNG and the time.
// Every URL is relative to the page, so it works under a path prefix as at the root.
const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
const $ = (id) => document.getElementById(id);

function showStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function checkReadiness() {
  try {
    const ready = await (await fetch(base + "readyz")).json();
    $("readiness").textContent = ready.status + (ready.reason ? ": " + ready.reason : "");
    const models = await (await fetch(base + "v1/models")).json();
    $("shape").textContent = models.data[0].shape + " (HxW)";
  } catch (error) {
    $("readiness").textContent = "unreachable";
  }
}

async function generate(event) {
  event.preventDefault();
  const body = { prompt: $("prompt").value, num_inference_steps: Number($("steps").value) };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  $("generate").disabled = true;
  showStatus("generating…", false);
  const started = performance.now();
  try {
    const response = await fetch(base + "generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const result = await response.json();
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      throw new Error(result.error.message + (retry ? ` (retry after ${retry} s)` : ""));
    }
    const seconds = (performance.now() - started) / 1000;
    $("image").src = "data:image/png;base64," + result.image;
    await $("image").decode();
    $("timing").textContent =
      `seed ${result.seed} · ${result.execution_time.toFixed(2)} s generating · ${seconds.toFixed(2)} s in all`;
    $("result").hidden = false;
    showStatus("done", false);
  } catch (error) {
    showStatus(error.message, true);
  } finally {
    $("generate").disabled = false;
  }
}

$("generate-form").addEventListener("submit", generate);
checkReadiness();
