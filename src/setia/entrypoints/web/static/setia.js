// Setia web pages: a little plain JavaScript, nothing needed for the pages to work.
// 1. The language menu changes the language as soon as one is chosen.
// 2. "Scan" buttons read a QR code with the camera where the browser has BarcodeDetector;
//    without it, a USB or Bluetooth scanner types into the focused field like a keyboard.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
  if (!("BarcodeDetector" in window) || !navigator.mediaDevices) { return; }
  var video = document.getElementById("scanner");
  document.querySelectorAll("button[data-scan]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var field = document.getElementById(button.getAttribute("data-scan"));
      var detector = new window.BarcodeDetector({ formats: ["qr_code"] });
      navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } }).then(function (stream) {
        video.srcObject = stream; video.hidden = false; video.play();
        var timer = setInterval(function () {
          detector.detect(video).then(function (codes) {
            if (!codes.length) { return; }
            clearInterval(timer);
            stream.getTracks().forEach(function (track) { track.stop(); });
            video.hidden = true;
            field.value = codes[0].rawValue.replace(/^setia:voucher:/, "");
            field.form.submit();
          });
        }, 300);
      }, function () {
        // the camera refused (or none): the field still takes a typed or scanned code
        button.hidden = true;
        field.focus();
      });
    });
  });
})();
