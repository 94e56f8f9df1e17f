// The one door to the appliance: the public REST API, called with the admin session cookie.
// The API key never reaches this code after sign-in; the cookie is HttpOnly. Every state-changing
// request carries the session's CSRF token, and the root key's chosen tenant goes in X-Tenant-ID.

const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);

/** An error answered by the appliance, carrying the problem+json fields. */
export class ApiError extends Error {
  constructor(status, title, detail, body = null) {
    super(detail || title || `HTTP ${status}`);
    this.status = status;
    this.title = title || `HTTP ${status}`;
    this.detail = detail || "";
    this.body = body;
  }
  /** True when the route itself does not exist (its capability is not installed). */
  get routeMissing() {
    return (this.status === 404 && /no such resource or route/.test(this.detail)) || this.status === 405;
  }
}

async function toError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (body && typeof body === "object") {
    return new ApiError(response.status, body.title, body.detail, body);
  }
  return new ApiError(response.status, response.statusText, "");
}

export function createApi() {
  const api = {
    session: null,
    tenant: null,
    capabilities: {},
    inflight: 0,
    onBusy: null,

    /** Count a request in flight while `promise` settles, so the shell can show that work goes on. */
    async track(promise) {
      api.inflight += 1;
      api.onBusy?.(api.inflight);
      try {
        return await promise;
      } finally {
        api.inflight -= 1;
        api.onBusy?.(api.inflight);
      }
    },

    headers(method, extra = {}) {
      const headers = { Accept: "application/json", ...extra };
      if (api.tenant && api.isRoot) headers["X-Tenant-ID"] = api.tenant;
      if (!SAFE.has(method) && api.session) headers["X-CSRF-Token"] = api.session.csrf_token;
      return headers;
    },

    /** fetch() a path of this origin; returns the Response, throws ApiError on 4xx/5xx. */
    async raw(method, path, { body, headers = {}, allow = [] } = {}) {
      const init = { method, headers: api.headers(method, headers), credentials: "same-origin" };
      if (body !== undefined) {
        if (body instanceof Blob || typeof body === "string") {
          init.body = body;
        } else {
          init.body = JSON.stringify(body);
          init.headers["Content-Type"] = "application/json";
        }
      }
      const response = await api.track(fetch(path, init));
      if (!response.ok && !allow.includes(response.status)) {
        const error = await toError(response);
        if (response.status === 401 && api.onUnauthorized) api.onUnauthorized(error);
        throw error;
      }
      return response;
    },

    async json(method, path, options = {}) {
      const response = await api.raw(method, path, options);
      if (response.status === 204) return null;
      const text = await response.text();
      return text ? JSON.parse(text) : null;
    },

    get: (path, options) => api.json("GET", path, options),
    post: (path, body, options = {}) => api.json("POST", path, { ...options, body }),
    put: (path, body, options = {}) => api.json("PUT", path, { ...options, body }),
    del: (path, options) => api.json("DELETE", path, options),

    /** Every page of a cursor-paginated list, up to `max` items. */
    async all(path, max = 1000) {
      const items = [];
      let cursor = null;
      do {
        const sep = path.includes("?") ? "&" : "?";
        const url = `${path}${sep}limit=${Math.min(max, 1000)}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
        const page = await api.get(url);
        items.push(...(page.items || []));
        cursor = page.next_cursor;
      } while (cursor && items.length < max);
      return items;
    },

    /** PUT a file with upload progress (fetch cannot report it; XMLHttpRequest can). */
    upload(path, file, onProgress) {
      return api.track(new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        xhr.open("PUT", path);
        for (const [name, value] of Object.entries(api.headers("PUT"))) xhr.setRequestHeader(name, value);
        xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
        xhr.upload.addEventListener("progress", (event) => {
          if (event.lengthComputable) onProgress(event.loaded / event.total);
        });
        xhr.addEventListener("load", () => {
          let body = null;
          try {
            body = JSON.parse(xhr.responseText);
          } catch {
            body = null;
          }
          if (xhr.status >= 200 && xhr.status < 300) {
            onProgress(1);
            resolve(body);
          } else {
            reject(new ApiError(xhr.status, body?.title, body?.detail, body));
          }
        });
        xhr.addEventListener("error", () => reject(new ApiError(0, "Network error", "the upload did not reach the appliance")));
        xhr.send(file);
      }));
    },

    /** Whether the signed-in key is the root key (false once signed out, even mid-request). */
    get isRoot() {
      return Boolean(api.session?.is_root);
    },

    has(capability) {
      return Boolean(api.capabilities[capability]);
    },
  };
  return api;
}

/** Sign in: trade a key for the session cookie. Returns the session (with its CSRF token). */
export async function signIn(key) {
  const response = await fetch("/admin/api/session", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ key }),
    credentials: "same-origin",
  });
  if (!response.ok) throw await toError(response);
  return response.json();
}

/** The current session, or null when signed out. */
export async function currentSession() {
  const response = await fetch("/admin/api/session", { headers: { Accept: "application/json" }, credentials: "same-origin" });
  if (response.status === 401) return null;
  if (!response.ok) throw await toError(response);
  return response.json();
}
