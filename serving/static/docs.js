"use strict";
// A self-contained reference page rendered from the server's own openapi.json (no CDN, no build):
// each operation with its summary, request body schema and responses.
const base = location.pathname.replace(/docs\/?$/, "");

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function resolve(schema, components) {
  const ref = schema && schema.$ref;
  return ref ? components[ref.split("/").pop()] : schema;
}

function render(spec) {
  const components = (spec.components || {}).schemas || {};
  document.getElementById("title").textContent = spec.info.title;
  document.getElementById("summary").textContent = spec.info.summary || "";
  const main = document.getElementById("operations");
  main.replaceChildren();
  for (const [path, operations] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      const section = element("section", undefined, "operation");
      const heading = element("h2");
      heading.append(element("span", method, "method"), element("code", path));
      section.append(heading, element("p", operation.description || operation.summary || ""));
      const body = operation.requestBody && operation.requestBody.content["application/json"];
      if (body) {
        section.append(element("h3", "Request body (application/json)"));
        section.append(element("pre", JSON.stringify(resolve(body.schema, components), null, 2)));
      }
      const table = element("table");
      const header = element("tr");
      header.append(element("th", "status"), element("th", "meaning"), element("th", "content"));
      table.append(header);
      for (const [status, response] of Object.entries(operation.responses || {})) {
        const row = table.insertRow();
        row.insertCell().textContent = status;
        row.insertCell().textContent = response.description || "";
        row.insertCell().textContent = Object.keys(response.content || {}).join(", ");
      }
      section.append(element("h3", "Responses"), table);
      main.append(section);
    }
  }
  const schemas = element("section", undefined, "operation");
  schemas.append(element("h2", "Schemas"));
  for (const [name, schema] of Object.entries(components)) {
    schemas.append(element("h3", name), element("pre", JSON.stringify(schema, null, 2)));
  }
  main.append(schemas);
}

fetch(base + "openapi.json")
  .then((response) => response.json())
  .then(render)
  .catch((error) => {
    document.getElementById("operations").textContent = "could not load openapi.json: " + error;
  });
