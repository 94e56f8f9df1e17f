// The hello plugin's admin panel: an ES module exporting render(element, api).
export async function render(element, api) {
  const greeting = await api.get("/v1/hello");
  const heading = document.createElement("h2");
  heading.textContent = greeting.message;
  const visits = document.createElement("p");
  visits.textContent = `${greeting.visits} visit(s) in this tenant`;
  element.replaceChildren(heading, visits);
}
