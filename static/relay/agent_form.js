// The agent form: the model field's placeholder is the chosen provider's default model, which
// an empty field stands for.
(function () {
  "use strict";
  for (const form of document.querySelectorAll("form.agent-form")) {
    const provider = form.querySelector('[data-role="provider"]');
    const model = form.querySelector('[data-role="model"]');
    const update = () => {
      const fallback = provider.selectedOptions[0]?.dataset.defaultModel;
      model.placeholder = fallback ? `${fallback} (the provider's default)` : model.dataset.placeholderDefault;
    };
    provider.addEventListener("change", update);
    update();
  }
})();
