// meter serve's page: pick an image, ask, see the answers and the heat map. Plain JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const TASK_LABELS = {
  vqa: ["Ask a question", "What color is the triangle?"],
  match: ["Match a caption", "a red triangle and a blue circle."],
  snli_ve: ["Entailment of a hypothesis", "there is a red triangle."],
  caption: ["Write a caption", "(the model writes it)"],
};
let image = null;
let overlays = {};

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function describeModel() {
  const response = await fetch("/api/model");
  const model = await response.json();
  $("model").textContent = `${model.model_name} (weights ${model.model_id}): ${model.model}; heads: ${model.heads.join(", ")}`;
  const tasks = [...(model.explain.tasks || [])];
  if ("/api/caption" in model.endpoints) tasks.push("caption");
  for (const task of tasks) $("task").add(new Option(TASK_LABELS[task][0], task));
  for (const [method, description] of Object.entries(model.explain.methods || {})) {
    const option = new Option(method, method, false, method === model.explain.default_method);
    option.title = description;
    $("method").add(option);
  }
  for (let layer = 1; layer <= (model.explain.layers || 0); layer++) $("layer").add(new Option(`layer ${layer}`, layer));
  if (!tasks.length) showError("this model has no head the page can use; see /api/model for its endpoints");
  placeholder();
}

function placeholder() {
  const task = $("task").value;
  $("text").placeholder = task ? TASK_LABELS[task][1] : "";
  $("text").disabled = task === "caption";
}

function choose(file) {
  if (!file) return;
  image = file;
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("drop-hint").hidden = true;
  showError("");
  clearOutput(); // the answers and the map were the previous image's
}

function clearOutput() {
  $("output").hidden = true;
  $("answers").replaceChildren();
  $("notes").replaceChildren();
  $("timing").textContent = "";
  overlays = {};
  $("heatmap").removeAttribute("src");
}

function explainedWhat(task, data) {
  if (!data.explained) return "";
  if (data.explained.answer !== undefined) return `the answer "${data.explained.answer}"`;
  if (data.explained.label !== undefined) return `"${data.explained.label}"`;
  return `the match of "${$("text").value.trim()}"`;
}

function listResults(data) {
  const rows = [];
  if (data.answers) for (const a of data.answers) rows.push([a.answer, a.score]);
  if (data.entailment) for (const [label, p] of Object.entries(data.entailment)) rows.push([label, p]);
  if (data.explained && data.explained.match_score !== undefined) rows.push(["match score", data.explained.match_score]);
  if (data.explained && data.explained.match_probability !== undefined) {
    rows.push(["P(match)", data.explained.match_probability]);
  }
  if (data.caption !== undefined) rows.push([data.caption, null]);
  $("answers").replaceChildren(
    ...rows.map(([name, score]) => {
      const item = document.createElement("li");
      item.textContent = score === null ? name : `${name}: ${score.toFixed(3)}`;
      if (score !== null && score >= 0 && score <= 1) {
        const bar = document.createElement("span");
        bar.className = "bar";
        bar.style.width = `${Math.round(score * 120)}px`;
        item.append(bar);
      }
      return item;
    }),
  );
}

function showHeatmap() {
  const view = overlays[$("layer").value] || overlays.mean;
  $("heatmap").hidden = !view;
  if (view) $("heatmap").src = view;
}

async function ask(event) {
  event.preventDefault();
  if (!image) return showError("choose an image first");
  const task = $("task").value;
  const form = new FormData();
  form.append("image", image);
  let url = "/api/caption";
  if (task !== "caption") {
    url = "/api/explain";
    form.append("text", $("text").value);
    form.append("task", task);
    form.append("method", $("method").value);
  }
  $("go").disabled = true;
  try {
    const response = await fetch(url, { method: "POST", body: form });
    const json = (response.headers.get("content-type") || "").includes("application/json");
    const data = json ? await response.json() : { error: (await response.text()).slice(0, 200) };
    if (!response.ok) {
      clearOutput(); // not the answers of an earlier question beside this error
      return showError(`${response.status}: ${data.error || response.statusText}`);
    }
    showError("");
    $("output").hidden = false;
    $("result-title").textContent = task === "vqa" ? "Answers" : "Result";
    listResults(data);
    overlays = data.heatmap ? data.heatmap.overlays : {};
    $("heatmap-caption").textContent = data.heatmap
      ? `${data.heatmap.method} map for ${explainedWhat(task, data)} over the part of the image the model sees`
      : "";
    showHeatmap();
    $("timing").textContent = `${data.model_name} answered in ${(data.seconds * 1000).toFixed(0)} ms (batch of ${data.batch.size})`;
    $("notes").replaceChildren(...data.notes.map((note) => Object.assign(document.createElement("li"), { textContent: note })));
  } catch (error) {
    showError(`the server did not answer: ${error}`);
  } finally {
    $("go").disabled = false;
  }
}

$("file").addEventListener("change", () => choose($("file").files[0]));
$("drop").addEventListener("dragover", (event) => { event.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  choose(event.dataTransfer.files[0]);
});
$("ask").addEventListener("submit", ask);
$("task").addEventListener("change", placeholder);
$("layer").addEventListener("change", showHeatmap);
$("method").addEventListener("change", () => { if (!$("output").hidden) $("ask").requestSubmit(); });
describeModel().catch((error) => showError(`cannot read the model's description: ${error}`));
