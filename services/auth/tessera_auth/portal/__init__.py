"""The browser side of the auth service: a login portal and an account page.

Server-rendered HTML (Jinja2), no JavaScript at all, every form protected
against CSRF (:mod:`.csrf`), every return URL checked (:mod:`.return_url`),
strict security headers on every answer (:mod:`.pages`). The routes are in
:mod:`.routes`; importing this package loads nothing else.
"""
