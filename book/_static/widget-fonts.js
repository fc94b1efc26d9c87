// The offline widget manager (_static/widgets/embed-amd.js) loads its icon fonts (Font Awesome 5) from the
// folder of its AMD module, which requirejs places beside the page (book/@jupyter-widgets/...), where no file
// is: every widget page made 3 failed font requests. Map the module names to _static/widgets/, where
// scripts/vendor_js.sh puts those fonts. Loaded between require.js and embed-amd.js (nb_ipywidgets_js in
// _config.yml): the paths must be set before embed-amd.js defines its modules.
(function () {
  var here = document.currentScript && document.currentScript.src;
  if (typeof require === "undefined" || !require.config || !here) return;
  var widgets = new URL("widgets", here).href;
  require.config({paths: {"@jupyter-widgets/html-manager/dist": widgets, "@jupyter-widgets": widgets}});
})();
