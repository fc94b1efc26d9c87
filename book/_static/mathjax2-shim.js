/*
 * MathJax 2 -> 3 bridge for the offline Jupyter widget manager. Written for this book.
 *
 * @jupyter-widgets/html-manager 1.0.6 (embed-amd.js) typesets widget labels with the MathJax 2 call
 *     MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])
 * whenever window.MathJax is defined. This book loads MathJax 3, which has no MathJax.Hub, so
 * every widget page logged "Cannot read properties of undefined (reading 'Queue')". This file
 * gives the MathJax 3 object a small MathJax.Hub whose Queue runs its commands in order:
 * ["Typeset", hub, element] becomes MathJax 3's typesetPromise([element]), a function is called.
 *
 * MathJax 3 replaces window.MathJax when it starts (the page's configuration object becomes
 * MathJax.config), so the hub is attached through a setter on window.MathJax, whatever the order
 * in which this file, MathJax and the widget manager run.
 */
(function () {
  "use strict";

  function typeset(elements) {
    var mj = window.MathJax;
    var ready = mj && mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve();
    return ready
      .then(function () {
        if (mj && typeof mj.typesetPromise === "function") {
          return mj.typesetPromise(elements);
        }
      })
      .catch(function (err) {
        console.warn("mathjax2-shim: typesetting a widget label failed:", err);
      });
  }

  var hub = {
    Queue: function () {
      var done = Promise.resolve();
      Array.prototype.forEach.call(arguments, function (command) {
        done = done.then(function () {
          if (typeof command === "function") {
            return command();
          }
          if (Array.isArray(command) && command[0] === "Typeset") {
            return typeset(command[2] ? [command[2]] : undefined);
          }
        });
      });
      return done;
    },
  };

  // Only a started MathJax 3 (it has a version) gets the hub; a plain configuration object does not.
  function withHub(mj) {
    if (mj && typeof mj === "object" && mj.version && !mj.Hub) {
      mj.Hub = hub;
    }
    return mj;
  }

  var current = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    enumerable: true,
    get: function () {
      return current;
    },
    set: function (value) {
      current = withHub(value);
    },
  });
})();
