"use strict";
document.getElementById("signin").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("signin-error");
  const button = document.getElementById("signin-button");
  error.textContent = "";
  button.disabled = true;
  try {
    const response = await fetch("/api/signin", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        user: document.getElementById("user").value,
        password: document.getElementById("password").value,
      }),
    });
    if (response.ok) {
      location.href = "/";
      return;
    }
    const body = await response.json().catch(() => ({}));
    error.textContent = body.error || `Sign-in failed (${response.status})`;
  } catch (failure) {
    error.textContent = "The daemon can not be reached";
  } finally {
    button.disabled = false;
  }
});
