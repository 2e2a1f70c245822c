// What the browser remembers: this device's credential and the user's contacts.

const ACCOUNT = "anruf.account";
const CONTACTS = "anruf.contacts";

function read(key, fallback) {
  try {
    const value = localStorage.getItem(key);
    return value === null ? fallback : JSON.parse(value);
  } catch {
    return fallback;
  }
}

/** {token, deviceId, number} or null. */
export function loadAccount() {
  const account = read(ACCOUNT, null);
  return account && typeof account.token === "string" ? account : null;
}

export function saveAccount(account) {
  localStorage.setItem(ACCOUNT, JSON.stringify(account));
}

export function clearAccount() {
  localStorage.removeItem(ACCOUNT);
}

/** Contact numbers, as entered (E.164 once the server confirmed them). */
export function loadContacts() {
  const list = read(CONTACTS, []);
  return Array.isArray(list) ? list.filter((n) => typeof n === "string") : [];
}

export function saveContacts(numbers) {
  localStorage.setItem(CONTACTS, JSON.stringify(numbers));
}
